"""Reading a caller's jobs for the status API: owner-scoped SQL and keyset pagination.

Every statement filters on ``owner`` (the Cognito ``sub``): another user's job and a job that
does not exist are the same ``None``. Lists are newest first, ordered by (created_at DESC,
id ASC), which the ``jobs_owner_created`` index serves directly; the cursor is the position of
the last row returned, so pages never repeat or skip a job however many are added meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from offload.db.uploads import revision_sql
from offload.user_errors import redact

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_CURSOR_CHARS = 512
# What a job id can be (bullmq ids we make: offload/jobs.py); anything else names no job, and a
# NUL in it would reach PostgreSQL, whose text refuses it. Always fullmatch: `$` would let a
# final newline through.
JOB_ID = re.compile(r"[A-Za-z0-9_.-]{1,200}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidCursor(ValueError):
    """A cursor this API did not hand out (or one that was tampered with)."""


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
    queue: str | None = None  # never shown: the main queue or a step queue (a retry goes there)


_COLUMNS = (
    "id, name, upload_id, state, attempt, max_attempts, progress, result, error_message,"
    " created_at, started_at, finished_at, updated_at,"
    " (SELECT u.filename FROM uploads u WHERE u.id = jobs.upload_id) AS filename,"
    f" (SELECT jobs.revision IS DISTINCT FROM {revision_sql('u')}"
    "  FROM uploads u WHERE u.id = jobs.upload_id) AS superseded,"
    " bucket, queue"
)


@dataclass(frozen=True)
class Cursor:
    created_at: datetime
    job_id: str


def encode_cursor(cursor: Cursor) -> str:
    """Opaque to clients: url-safe base64 of ``{"t": <µs since epoch>, "i": <job id>}``.
    Microseconds (PostgreSQL's precision, as an integer) so the position is exact."""
    micros = (cursor.created_at - _EPOCH) // timedelta(microseconds=1)
    raw = json.dumps({"t": micros, "i": cursor.job_id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(token: str) -> Cursor:
    if not token or len(token) > MAX_CURSOR_CHARS:
        raise InvalidCursor("cursor is not valid")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        fields = json.loads(raw)
        micros, job_id = fields["t"], fields["i"]
        if isinstance(micros, bool) or not isinstance(micros, int) or not isinstance(job_id, str):
            raise TypeError
        if not JOB_ID.fullmatch(job_id):
            raise ValueError("not a job id")
        return Cursor(_EPOCH + timedelta(microseconds=micros), job_id)
    except (binascii.Error, ValueError, TypeError, KeyError, OverflowError, RecursionError) as exc:
        raise InvalidCursor("cursor is not valid") from exc


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
        self, owner: str, limit: int = DEFAULT_LIMIT, after: Cursor | None = None
    ) -> tuple[list[JobRow], Cursor | None]:
        """One page of the owner's jobs, newest first, and the cursor of the next page (None
        on the last page)."""
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be within 1..{MAX_LIMIT}")
        params: dict[str, Any] = {"owner": owner, "limit": limit + 1}
        position = ""
        if after is not None:
            position = " AND (created_at < %(at)s OR (created_at = %(at)s AND id > %(after_id)s))"
            params |= {"at": after.created_at, "after_id": after.job_id}
        async with self._pool.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(JobRow))
            await cursor.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE owner = %(owner)s{position}"
                " ORDER BY created_at DESC, id ASC LIMIT %(limit)s",
                params,
            )
            rows = await cursor.fetchall()
        if len(rows) <= limit:
            return rows, None
        rows = rows[:limit]
        return rows, Cursor(rows[-1].created_at, rows[-1].id)
