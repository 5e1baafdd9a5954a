"""Read an S3 object as a stream of fixed-size chunks, or spool it to a temporary file.

Uploads can be many gigabytes, and a worker runs several jobs side by side: a processor must
never hold a whole object in memory. Reads are pinned to the job's object (``VersionId``,
``IfMatch`` on the etag) because a key can be overwritten between the S3 event and the job; a
job must process the bytes its event announced, or fail, never a mix of two uploads.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from botocore.exceptions import ClientError

from fargate_worker.errors import PermanentJobError
from fargate_worker.processors.readahead import DEFAULT_DEPTH, ReadAhead
from offload.jobs import JobRef

# 4 MiB: each chunk is one hand-over between the read-ahead thread and the processor, and
# with 1 MiB chunks those hand-overs (GIL and queue wake-ups) cost the worker ~0.3 CPU-s per
# GiB on top of sha256's ~0.55 (bench/stream_memory.py). With the read-ahead depth, at most
# 4 chunks (16 MiB) per job are in memory.
DEFAULT_CHUNK_SIZE = 4 << 20

# Error codes that no retry can fix for this job's object: fail fast, keep the attempts.
# A 403 is mapped only for AccessDenied: other 403s (ExpiredToken, RequestTimeTooSkewed,
# SignatureDoesNotMatch after a credential rotation) can succeed on the next attempt.
_PERMANENT_CODES = {
    "NoSuchKey": "object does not exist",
    "NoSuchBucket": "bucket does not exist",
    "NoSuchVersion": "object version does not exist",
    "PreconditionFailed": "object was replaced since the job was queued (etag mismatch)",
    "AccessDenied": "access denied",
    "InvalidObjectState": "object is archived (restore it before processing)",
}


class StreamSizeMismatch(Exception):
    """Fewer or more bytes arrived than S3 announced: a broken read, retried like any other."""


@dataclass
class S3Object:
    """An open GetObject response: metadata plus a chunk iterator over its body."""

    ref: JobRef
    content_length: int
    content_type: str | None
    etag: str | None
    version_id: str | None
    body: Any
    _readers: list[ReadAhead[bytes]] = field(default_factory=list, repr=False)

    def chunks(
        self, chunk_size: int = DEFAULT_CHUNK_SIZE, read_ahead: int = DEFAULT_DEPTH
    ) -> Iterator[bytes]:
        """Yield the body in chunks of ``chunk_size`` bytes (the last may be shorter); raise
        StreamSizeMismatch at the end if the total differs from ContentLength.

        With ``read_ahead`` > 0, a thread reads up to that many chunks ahead of the caller, so
        the network and the caller's work overlap (``readahead``); 0, or an object of one
        chunk, reads in the caller's thread. At most ``read_ahead + 2`` chunks are in memory
        (queued, being read, in use)."""
        source: Iterator[bytes] = self.body.iter_chunks(chunk_size)
        # One chunk or less: no later read to overlap with the caller's work, so no thread.
        if read_ahead > 0 and self.content_length > chunk_size:
            reader = ReadAhead(source, read_ahead, name=f"s3-read:{self.ref.key[-40:]}")
            self._readers.append(reader)
            source = iter(reader)
        received = 0
        for chunk in source:
            received += len(chunk)
            yield chunk
        if received != self.content_length:
            raise StreamSizeMismatch(
                f"s3://{self.ref.bucket}/{self.ref.key}: read {received} bytes, "
                f"ContentLength is {self.content_length}"
            )

    def stop_reading(self) -> None:
        """Stop the read-ahead threads of ``chunks``, also when the caller left the loop early."""
        for reader in self._readers:
            reader.stop()


def _unquote(etag: str | None) -> str | None:
    return etag.strip('"') if etag else None


def get_params(ref: JobRef) -> dict[str, Any]:
    """GetObject parameters that pin the read to the job's exact object."""
    params: dict[str, Any] = {"Bucket": ref.bucket, "Key": ref.key}
    if ref.version_id:
        params["VersionId"] = ref.version_id
    if ref.etag:
        # S3 wants the quoted form; events carry it bare, HeadObject quoted: accept both.
        params["IfMatch"] = f'"{_unquote(ref.etag)}"'
    return params


def permanent_error(exc: ClientError, ref: JobRef) -> PermanentJobError | None:
    """The PermanentJobError for an S3 error no retry can fix, else None (let it propagate)."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    reason = _PERMANENT_CODES.get(code)
    if reason is None:
        return None
    # Shown to the user as it is (GET /jobs): no bucket or key, which the job's logs have.
    return PermanentJobError(f"the uploaded file: {reason} [{code}]")


@contextmanager
def open_object(s3: Any, ref: JobRef) -> Iterator[S3Object]:
    """GetObject pinned to the job's version/etag; the body is closed on exit, even when the
    caller stops early, so an abandoned stream does not hold a connection."""
    try:
        response = s3.get_object(**get_params(ref))
    except ClientError as exc:
        permanent = permanent_error(exc, ref)
        if permanent is not None:
            raise permanent from exc
        raise
    body = response["Body"]
    obj: S3Object | None = None
    try:
        etag = _unquote(response.get("ETag"))
        if ref.etag and etag != _unquote(ref.etag):
            # Belt and braces: S3 enforces IfMatch, but an endpoint that ignores it must not
            # make us process another upload's bytes under this job's name.
            raise PermanentJobError(
                f"the uploaded file was replaced since the job was queued "
                f"(etag {etag}, expected {_unquote(ref.etag)})"
            )
        obj = S3Object(
            ref=ref,
            content_length=int(response["ContentLength"]),
            content_type=response.get("ContentType"),
            etag=etag,
            version_id=response.get("VersionId") or ref.version_id,
            body=body,
        )
        yield obj
    finally:
        if obj is not None:
            obj.stop_reading()  # no thread may still read the body once it is closed
        body.close()


@contextmanager
def spool(
    s3: Any,
    ref: JobRef,
    *,
    max_bytes: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[IO[bytes], S3Object]]:
    """Copy the object chunk by chunk into an anonymous temporary file and yield it (rewound)
    with the object's metadata. For readers that need to seek (Pillow). The file has no name
    on disk, so it disappears on exit, and even if the process is killed mid-job.

    ``max_bytes`` refuses larger objects before downloading anything (PermanentJobError):
    a worker's disk is finite. ``on_progress(done, total)`` is called after each chunk.
    """
    with tempfile.TemporaryFile() as file:
        with open_object(s3, ref) as obj:
            if max_bytes is not None and obj.content_length > max_bytes:
                raise PermanentJobError(
                    f"the uploaded file's {obj.content_length} bytes are over the "
                    f"{max_bytes}-byte limit for this job"
                )
            done = 0
            for chunk in obj.chunks(chunk_size):
                file.write(chunk)
                done += len(chunk)
                if on_progress is not None:
                    on_progress(done, obj.content_length)
        file.flush()
        file.seek(0)
        yield file, obj
