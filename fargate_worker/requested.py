"""Running the jobs users ask for (``offload.requested_jobs``): today ``export``.

They have a status row like an upload step (``OffloadWorker._process_tracked`` writes it), but
run here, in the worker's own process, not in a sandbox child: they read no uploaded bytes
(the export reads the owner's job rows, text in PostgreSQL, and writes one CSV), and they need
the worker's database login, which a child never has. Their parameters are read back from the
job's reference and validated again (``export_from_ref``): a job in the queue is not trusted.

The CSV is bounded (:data:`MAX_EXPORT_ROWS`; ``truncated`` in the result says when it was cut),
and every cell a spreadsheet would read as a formula is quoted with a leading ``'`` (error
messages quote uploaded files' contents, which the user may not have written).
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from typing import Any

from psycopg_pool import AsyncConnectionPool

from offload.jobs import JobRef
from offload.requested_jobs import EXPORT, REQUESTED_JOB_NAMES, export_from_ref

MAX_EXPORT_ROWS = 100_000
COLUMNS = (
    "job_id",
    "name",
    "upload_id",
    "state",
    "attempt",
    "created_at",
    "finished_at",
    "error",
)
_EXPORT_ROWS = """
SELECT id, name, upload_id, state, attempt, created_at, finished_at, error_message
FROM jobs
WHERE owner = %(owner)s AND created_at >= %(start)s AND created_at < %(end)s
ORDER BY created_at, id
LIMIT %(limit)s
"""
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class RequestedJobRunner:
    """Runs a requested job by name over the worker's pool and S3 client."""

    names = REQUESTED_JOB_NAMES

    def __init__(self, pool: AsyncConnectionPool, s3: Callable[[], Any]):
        self._pool = pool
        self._s3 = s3

    def __contains__(self, name: object) -> bool:
        return name in self.names

    async def run(self, name: str, ref: JobRef) -> dict[str, Any]:
        assert name == EXPORT, name
        return await self._export(ref)

    async def _export(self, ref: JobRef) -> dict[str, Any]:
        export = export_from_ref(ref)
        start = datetime.combine(export.start, time.min, UTC)
        end = datetime.combine(export.end + timedelta(days=1), time.min, UTC)
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                _EXPORT_ROWS,
                {"owner": ref.owner, "start": start, "end": end, "limit": MAX_EXPORT_ROWS + 1},
            )
            rows = await cursor.fetchall()
        truncated = len(rows) > MAX_EXPORT_ROWS
        body = to_csv(rows[:MAX_EXPORT_ROWS]).encode("utf-8")
        s3 = self._s3()
        await asyncio.to_thread(
            s3.put_object,
            Bucket=ref.bucket,
            Key=ref.key,
            Body=body,
            ContentType="text/csv; charset=utf-8",
            ContentDisposition='attachment; filename="jobs.csv"',
        )
        return {
            "export_key": ref.key,
            "rows": min(len(rows), MAX_EXPORT_ROWS),
            "truncated": truncated,
        }


def to_csv(rows: list[tuple[Any, ...]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_cell(value) for value in row])
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text
