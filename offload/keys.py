"""S3 key layout: where uploads land and where their outputs go.

Uploads are namespaced by the caller's Cognito ``sub`` and the upload id, so one user can never
name another user's object, and every output of an upload sits under one deterministic prefix
(re-running a job overwrites the same keys instead of adding new ones).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

UPLOADS_PREFIX = "uploads/"
PROCESSED_PREFIX = "processed/"
MAX_FILENAME_BYTES = 200

# Cc (controls), Cf (format: bidi overrides, zero-width), Zl/Zp (line breaks), Cs, Co, Cn.
_DROPPED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
_UNSAFE = re.compile(r'[/\\:*?"<>|]')
# One key segment naming an owner (a Cognito sub) or an upload: what callers' ids must be.
# Always fullmatch: `$` would let a final newline through.
KEY_SEGMENT_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


class KeyLayoutError(ValueError):
    """A key or a key part that does not fit the layout."""


def sanitize_filename(name: str) -> str:
    """A readable, safe last key segment: NFC, no controls or bidi marks, no path separators,
    no leading dots, at most MAX_FILENAME_BYTES of UTF-8 (cut on a character boundary)."""
    normalized = unicodedata.normalize("NFC", name)
    kept = "".join(ch for ch in normalized if unicodedata.category(ch) not in _DROPPED_CATEGORIES)
    cleaned = _UNSAFE.sub("_", kept).strip().lstrip(".").strip()
    cleaned = re.sub(r"\s+", " ", cleaned)
    encoded = cleaned.encode("utf-8")[:MAX_FILENAME_BYTES]
    cleaned = encoded.decode("utf-8", errors="ignore").strip()
    return cleaned or "file"


@dataclass(frozen=True)
class UploadKey:
    owner: str
    upload_id: str
    filename: str

    def __str__(self) -> str:
        return f"{UPLOADS_PREFIX}{self.owner}/{self.upload_id}/{self.filename}"

    @classmethod
    def build(cls, owner: str, upload_id: str, filename: str) -> UploadKey:
        for label, part in (("owner", owner), ("upload id", upload_id)):
            if not KEY_SEGMENT_ID.fullmatch(part):
                raise KeyLayoutError(f"{label} {part!r} is not a valid key segment")
        return cls(owner, upload_id, sanitize_filename(filename))

    @classmethod
    def parse(cls, key: str) -> UploadKey:
        if not key.startswith(UPLOADS_PREFIX):
            raise KeyLayoutError(f"key {key!r} is not under {UPLOADS_PREFIX}")
        parts = key[len(UPLOADS_PREFIX) :].split("/")
        if len(parts) != 3 or not all(parts):
            raise KeyLayoutError(f"key {key!r} is not uploads/<owner>/<upload id>/<name>")
        owner, upload_id, filename = parts
        if not (KEY_SEGMENT_ID.fullmatch(owner) and KEY_SEGMENT_ID.fullmatch(upload_id)):
            raise KeyLayoutError(f"key {key!r} has an invalid owner or upload id")
        return cls(owner, upload_id, filename)

    def output_key(self, suffix: str) -> str:
        """Where an output of this upload goes: processed/<owner>/<upload id>/<suffix>."""
        return f"{PROCESSED_PREFIX}{self.owner}/{self.upload_id}/{suffix}"
