"""Where a job's outputs go: one deterministic key per source object and output name.

Shared by the processors (which write outputs) and the worker (which presigns writes for a
sandbox child only at these keys, ``fargate_worker/s3grants.py``).
"""

from __future__ import annotations

from offload.keys import PROCESSED_PREFIX, KeyLayoutError, UploadKey


def output_key(source_key: str, name: str) -> str:
    """Where output ``name`` of ``source_key`` goes, the same key on every run.

    Uploads (uploads/<owner>/<upload>/<file>) get processed/<owner>/<upload>/<name>, so all of
    an upload's outputs share a prefix; any other key (demos, manual runs) gets
    processed/<key>.<name>.
    """
    try:
        return UploadKey.parse(source_key).output_key(name)
    except KeyLayoutError:
        return f"{PROCESSED_PREFIX}{source_key}.{name}"


def is_output_of(source_key: str, key: str) -> bool:
    """Whether ``key`` is ``output_key(source_key, name)`` for a plain name (no ``/``)."""
    prefix = output_key(source_key, "")
    name = key[len(prefix) :]
    return key.startswith(prefix) and bool(name) and "/" not in name
