"""An upload's final state, written by the worker when its flow ends (``fargate_worker.finalize``).

The worker's database role sees the uploads table through these statements only
(``offload.db.roles``: UPDATE of the final-state columns, SELECT of the columns they read and
return), so a worker that runs hostile input can end an upload, not read or rename it.

Every write is guarded by the object the flow is about (the row's revision, as its jobs carry
it): a flow of an older version of the key never ends the upload that moved on to a newer one.
Writes are repeatable, so the event that follows (``offload.upload_events``) can be published
at least once: a retried ``finalize`` (or a deferred failure handed out again) finds the row
already final and gets it back, as long as it is still the same outcome.

* ``processed``: from ``uploaded``/``queued`` (``finalize`` may run before the enqueue path's
  ``queued`` lands), from ``failed`` (a failed step retried, then ``finalize``), and again
  from ``processed``; ``finished_at`` keeps its first value.
* ``failed``: from ``uploaded``/``queued`` and again from ``failed``, never over ``processed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from offload.db.pool import until_stored
from offload.jobs import JobRef

# uploads.revision as the jobs carry it (offload.db.uploads.revision_sql, spelled out: that
# module's import would load its quota code into the worker).
_REVISION = "COALESCE(NULLIF(version_id, ''), btrim(COALESCE(etag, ''), '\"'))"
_RETURNING = "RETURNING id, owner, state, finished_at"

MARK_PROCESSED = f"""
UPDATE uploads SET state = 'processed', result_key = %(result_key)s, failed_step = NULL,
    error = NULL, updated_at = now(),
    finished_at = CASE WHEN state = 'processed' THEN finished_at ELSE now() END
WHERE id = %(upload_id)s AND owner = %(owner)s
  AND state IN ('uploaded', 'queued', 'failed', 'processed') AND {_REVISION} = %(revision)s
{_RETURNING}
"""

MARK_FAILED = f"""
UPDATE uploads SET state = 'failed', failed_step = %(failed_step)s, error = %(error)s,
    result_key = NULL, updated_at = now(),
    finished_at = CASE WHEN state = 'failed' THEN finished_at ELSE now() END
WHERE id = %(upload_id)s AND owner = %(owner)s
  AND state IN ('uploaded', 'queued', 'failed') AND {_REVISION} = %(revision)s
{_RETURNING}
"""

# The columns the statements above read (WHERE, RETURNING) and write: the worker's grants.
READ_COLUMNS = ("id", "owner", "state", "version_id", "etag", "finished_at")
WRITTEN_COLUMNS = ("state", "result_key", "failed_step", "error", "finished_at", "updated_at")


@dataclass(frozen=True)
class FinalUpload:
    """The upload row as a final-state write left it."""

    id: str
    owner: str
    state: str
    finished_at: datetime | None


class UploadOutcomes:
    """The worker's writer of final upload states."""

    def __init__(self, pool: AsyncConnectionPool):
        self._pool = pool

    async def _write(self, what: str, statement: str, params: dict[str, Any]) -> FinalUpload | None:
        async def once() -> FinalUpload | None:
            async with self._pool.connection() as conn:
                cursor = conn.cursor(row_factory=class_row(FinalUpload))
                await cursor.execute(statement, params)
                return await cursor.fetchone()

        return await until_stored(what, str(params["upload_id"]), once)

    @staticmethod
    def _params(ref: JobRef) -> dict[str, Any]:
        return {"upload_id": ref.upload_id, "owner": ref.owner, "revision": ref.revision}

    async def mark_processed(self, ref: JobRef, result_key: str) -> FinalUpload | None:
        """The upload of ``ref``'s object is processed, its result at ``result_key``. None
        when the row names another object (or is gone): the flow ended for nothing shown."""
        params = self._params(ref) | {"result_key": result_key}
        return await self._write("upload processed", MARK_PROCESSED, params)

    async def mark_failed(self, ref: JobRef, step: str, error: str) -> FinalUpload | None:
        """The upload of ``ref``'s object failed at ``step`` with the public reason ``error``.
        None when the row names another object or is already processed."""
        params = self._params(ref) | {"failed_step": step, "error": error}
        return await self._write("upload failed", MARK_FAILED, params)
