"""Aborting our own expired multipart uploads, early (a reconciler repair).

A multipart upload's parts are stored, and billed, from the moment they arrive, and S3 keeps
them until the upload is completed or aborted. The bucket's lifecycle rule aborts incomplete
uploads after days (``storage.abortIncompleteMultipartAfterDays``); we know much sooner that an
upload is dead: every part URL we handed out for it has expired. The API records, before it
signs anything, when the latest part URLs of an upload expire (``uploads.part_urls_expire_at``;
a complete pushes it forward the same way). Once that lies ``expired_upload_grace_s`` in the
past and the upload is still ``pending``, no client can send a part any more without asking for
fresh URLs, so nobody is using it: its row becomes ``aborted`` and its S3 multipart upload is
aborted (its parts deleted).

Race-freedom rests on two conditional UPDATEs of the same row (:meth:`UploadStore.expire` here,
:meth:`UploadStore.extend_part_urls` in the API before it signs URLs or completes): PostgreSQL
orders them, so either the API moved the expiry forward first and the reconciler leaves the
upload alone, or the reconciler marked it aborted first and the API refuses (409) without
signing or assembling anything. The row is claimed before S3 is touched: an S3 abort can then
never hit an upload a client was just given URLs for.

A pending row whose object is already in S3 (completed long ago, its S3 event lost) is left to
the lost-events repair, which takes the object as the enqueue Lambda would. Rows from before
the expiry was recorded (NULL) are left to the lifecycle rule.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from psycopg_pool import AsyncConnectionPool

from offload.db.uploads import Upload, UploadStore
from offload.uploads import object_exists
from offload.user_errors import aws_error_code

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)


@dataclass
class ExpiryReport:
    checked: int = 0
    aborted: int = 0
    completed: int = 0  # the object is in S3: the lost-events repair's business
    abort_failed: int = 0


def expiry_reason(upload: Upload, grace_s: int) -> str:
    """The row's ``error``, shown to the client (GET, and the 409 of a later complete)."""
    expired = upload.part_urls_expire_at
    at = expired.isoformat(timespec="seconds") if expired else "?"
    return (
        f"expired: its part URLs expired at {at} and it was neither resumed nor completed"
        f" within {grace_s} s; its parts were deleted, upload the file again"
    )


async def abort_expired_uploads(
    pool: AsyncConnectionPool, s3_client: Callable[[], S3Client], grace_s: int, limit: int
) -> ExpiryReport:
    """One bounded pass (at most ``limit`` rows): see the module docstring. ``s3_client`` is
    called only when there is something to abort (boto3 costs ~100 ms to import)."""
    report = ExpiryReport()
    store = UploadStore(pool)
    candidates = await store.expired(grace_s, limit)
    s3 = s3_client() if candidates else None
    for upload in candidates:
        assert s3 is not None
        report.checked += 1
        fields = {"upload_id": upload.id, "expired_at": str(upload.part_urls_expire_at)}
        # A complete moves the expiry forward before it calls S3, so an object here was
        # completed long ago and only its event is missing: not ours to abort.
        if await asyncio.to_thread(object_exists, s3, upload.bucket, upload.key):
            report.completed += 1
            continue
        claimed = await store.expire(upload.id, grace_s, expiry_reason(upload, grace_s))
        if claimed is None:
            continue  # resumed, completed or aborted since the SELECT: left alone
        assert claimed.multipart_upload_id is not None
        try:
            await asyncio.to_thread(
                s3.abort_multipart_upload,
                Bucket=claimed.bucket,
                Key=claimed.key,
                UploadId=claimed.multipart_upload_id,
            )
        except Exception as exc:
            if aws_error_code(exc) != "NoSuchUpload":  # NoSuchUpload: the lifecycle rule was first
                # The row stays aborted (no client can use it any more); the lifecycle rule
                # deletes the parts in the end.
                report.abort_failed += 1
                log.error(
                    "expired multipart upload could not be aborted in S3",
                    extra={**fields, "error": str(exc)[:300]},
                )
                continue
        report.aborted += 1
        log.info("expired multipart upload aborted", extra=fields)
    return report
