"""Reading a caller's jobs for the status API: owner-scoped SQL and keyset pagination.

Every statement filters on ``owner`` (the Cognito ``sub``): another user's job and a job that
does not exist are the same ``None``. Lists are newest first, ordered by (created_at DESC,
id ASC), which the ``jobs_owner_created`` index serves directly; the cursor
(:mod:`offload.pages`) is the position of the last row returned, so pages never repeat or skip
a job however many are added meanwhile. An upload's jobs (its pipeline) are read through the
``jobs_upload`` index, a bounded number per upload.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from offload.db.uploads import revision_sql
from offload.pages import DEFAULT_LIMIT, ROW_ID, Cursor, owner_page
from offload.user_errors import redact

# What a job id can be (bullmq ids we make: offload/jobs.py); anything else names no job, and a
# NUL in it would reach PostgreSQL, whose text refuses it. Always fullmatch.
JOB_ID = ROW_ID
# The most jobs an upload's pipeline shows: its steps and finalize, and those of older versions
# of its object (a single upload's key written again). Bounds the answer of GET /uploads.
PIPELINE_MAX_JOBS = 50


@dataclass(frozen=True)
class JobRow:
    id: str
    name: str
    upload_id: str | None
    state: str
    attempt: int
    max_attempts: int | None
    progress: Any
    result: Any
    error_message: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    filename: str | None = None  # the upload's, so a client can name the job's file
    # The job is for an older version of its upload's object (the key was written again):
    # its result describes bytes the key no longer holds, and its outputs' keys now hold (or
    # will hold) the newest version's.
    superseded: bool | None = None
    bucket: str | None = None  # never shown: named so that the error shown cannot carry it
    # The flow parent (the upload's finalize job) of a pipeline step (migration 0004); None
    # for a finalize job, for jobs from before pipelines and for jobs outside them.
    parent_id: str | None = None
    queue: str | None = None  # never shown: the main queue or a step queue (a retry goes there)


_COLUMNS = (
    "id, name, upload_id, state, attempt, max_attempts, progress, result, error_message,"
    " created_at, started_at, finished_at, updated_at,"
    " (SELECT u.filename FROM uploads u WHERE u.id = jobs.upload_id) AS filename,"
    f" (SELECT jobs.revision IS DISTINCT FROM {revision_sql('u')}"
    "  FROM uploads u WHERE u.id = jobs.upload_id) AS superseded,"
    " bucket, parent_id, queue"
)


def _shown_error(row: JobRow) -> str | None:
    if row.error_message is None:
        return None
    return redact(row.error_message, [row.bucket or ""])


def job_view(row: JobRow) -> dict[str, Any]:
    """What the API shows of a job: no stack trace, no worker id, no bucket. The error is
    redacted again here (offload.user_errors), whoever wrote it: rows written before the
    writers redacted, or by a tool other than offload's worker, show no internal name either."""

    def iso(value: datetime | None) -> str | None:
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None

    return {
        "id": row.id,
        "name": row.name,
        "uploadId": row.upload_id,
        "filename": row.filename,
        "state": row.state,
        "progress": row.progress,
        "attempts": row.attempt,
        "maxAttempts": row.max_attempts,
        "result": row.result,
        "error": _shown_error(row),
        "createdAt": iso(row.created_at),
        "startedAt": iso(row.started_at),
        "finishedAt": iso(row.finished_at),
        "updatedAt": iso(row.updated_at),
        "superseded": bool(row.superseded),
    }


class JobQueries:
    def __init__(self, pool: AsyncConnectionPool):
        self._pool = pool

    async def get_for_owner(self, job_id: str, owner: str) -> JobRow | None:
        async with self._pool.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(JobRow))
            await cursor.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE id = %(id)s AND owner = %(owner)s",
                {"id": job_id, "owner": owner},
            )
            return await cursor.fetchone()

    async def list_for_owner(
        self,
        owner: str,
        limit: int = DEFAULT_LIMIT,
        after: Cursor | None = None,
        upload_id: str | None = None,
        name: str | None = None,
    ) -> tuple[list[JobRow], Cursor | None]:
        """One page of the owner's jobs (only those of ``upload_id``, only those named
        ``name``, when given), newest first, and the cursor of the next page (None on the last
        page)."""
        filters = {"upload_id": upload_id, "name": name}
        return await owner_page(self._pool, JobRow, "jobs", _COLUMNS, owner, limit, after, filters)

    async def for_uploads(
        self, owner: str, upload_ids: Sequence[str], per_upload: int = PIPELINE_MAX_JOBS
    ) -> dict[str, list[JobRow]]:
        """The owner's jobs of each of ``upload_ids`` (its newest ``per_upload``, oldest
        first), in one statement: a page of ``GET /uploads`` costs one query for all its
        pipelines, each read through the ``jobs_upload`` index."""
        found: dict[str, list[JobRow]] = {upload_id: [] for upload_id in upload_ids}
        if not found:
            return found
        async with self._pool.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(JobRow))
            await cursor.execute(
                "SELECT j.* FROM unnest(%(ids)s::text[]) AS wanted(upload_id)"
                f" CROSS JOIN LATERAL (SELECT {_COLUMNS} FROM jobs"
                "  WHERE jobs.owner = %(owner)s AND jobs.upload_id = wanted.upload_id"
                "  ORDER BY created_at DESC, id ASC LIMIT %(per)s) AS j",
                {"ids": list(found), "owner": owner, "per": per_upload},
            )
            rows = await cursor.fetchall()
        for row in sorted(rows, key=lambda row: (row.created_at, row.id)):
            assert row.upload_id is not None
            found[row.upload_id].append(row)
        return found
