"""What a sandbox child may do in S3, decided by the worker: read its job's object, write its
job's outputs, nothing else.

A child holds no AWS credentials (``sandbox.SECRET_ENVIRONMENT``): the task role can read every
upload and the database secret, and a hostile file parsed in a child must not act with it.
Instead the child asks the worker, over its pipe, for a presigned URL per request
(``presigned_s3.PresignedS3``), and the worker signs only these:

* ``get_object`` of the job's bucket and key, at the job's version when it has one;
* ``put_object`` to the job's bucket at ``output_key(job key, name)`` (no ``/`` in the name).

URLs are signed when asked for (not when the job starts) and expire after
``URL_EXPIRES_S``: a long job still gets a fresh one for the output it writes at the end, and
a URL that leaks outlives its job by minutes at most.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fargate_worker.processors.outputs import is_output_of
from offload.jobs import JobRef

URL_EXPIRES_S = 900
# The parameters a child may have signed, per operation: anything else (ACLs, storage class,
# server-side encryption, checksums, copy sources) is refused rather than ignored, so a child
# cannot widen what a URL allows.
_ALLOWED = {
    "get_object": {"Bucket", "Key", "VersionId", "IfMatch"},
    "put_object": {"Bucket", "Key", "ContentType"},
}


class GrantRefused(Exception):
    """The child asked for an S3 request outside its job's object and outputs."""


class JobGrants:
    """The S3 requests of one job's child, presigned with the worker's client ``s3()`` (a
    function: making the client resolves credentials, which is left to the first request, in
    the thread that signs it)."""

    def __init__(self, ref: JobRef, s3: Callable[[], Any], expires_s: int = URL_EXPIRES_S):
        self.ref = ref
        self._s3 = s3
        self._expires_s = expires_s

    def presign(self, operation: str, params: Mapping[str, Any]) -> str:
        """The presigned URL for ``operation`` with ``params``; GrantRefused if not allowed.
        Header parameters (``IfMatch``, ``ContentType``) are signed too: the child must send
        them as they were asked for (``presigned_s3.HEADERS``)."""
        self.check(operation, params)
        return str(
            self._s3().generate_presigned_url(
                operation, Params=dict(params), ExpiresIn=self._expires_s
            )
        )

    def check(self, operation: str, params: Mapping[str, Any]) -> None:
        allowed = _ALLOWED.get(operation)
        if allowed is None:
            raise GrantRefused(f"S3 operation {operation!r} is not allowed to a processor")
        extra = set(params) - allowed
        if extra:
            raise GrantRefused(f"S3 parameters {sorted(extra)} are not allowed to a processor")
        if params.get("Bucket") != self.ref.bucket:
            raise GrantRefused("a processor reaches its job's bucket only")
        key = params.get("Key")
        if not isinstance(key, str):
            raise GrantRefused("the S3 request names no key")
        if operation == "get_object":
            if key != self.ref.key or params.get("VersionId") != self.ref.version_id:
                raise GrantRefused("a processor reads its job's object only")
        elif not is_output_of(self.ref.key, key):
            raise GrantRefused("a processor writes its job's outputs only")
