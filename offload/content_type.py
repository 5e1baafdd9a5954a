"""Content type sniffing: what an object's first bytes say it is, never what its uploader said.

One function for both places that need it: the enqueue path (a ranged GET of the first
:data:`SNIFF_RANGE_BYTES` of an accepted upload picks its pipeline, ``offload.pipelines``) and
the worker's processors (``inspect`` reports it, ``thumbnail`` picks the only decoder it lets
Pillow use). Pure: bytes in, a MIME type out; ``filetype`` is pure Python and reads at most the
bytes it is given.
"""

from __future__ import annotations

import codecs

import filetype

OCTET_STREAM = "application/octet-stream"
TEXT_PLAIN = "text/plain"
# What the enqueue path reads of an accepted upload: the magic numbers of every type a pipeline
# is chosen by (images, archives, PDF, media containers) sit in the first KiB, and the GET costs
# the same few milliseconds as a HEAD.
SNIFF_RANGE_BYTES = 1024


def detect_content_type(head: bytes, complete: bool) -> str:
    """Content type from magic bytes; UTF-8 text without control characters is text/plain.

    ``complete`` says ``head`` is the whole object, so a multi-byte character cut at the end
    of a longer object's head is not mistaken for invalid UTF-8.
    """
    kind = filetype.guess(head) if head else None
    if kind is not None:
        return str(kind.mime)
    if head:
        try:
            text = codecs.getincrementaldecoder("utf-8")().decode(head, final=complete)
        except UnicodeDecodeError:
            return OCTET_STREAM
        if all(ch.isprintable() or ch in "\t\n\r\f" for ch in text.lstrip("\ufeff")):
            return TEXT_PLAIN
    return OCTET_STREAM
