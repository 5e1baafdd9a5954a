"""Job status in PostgreSQL: every transition the worker makes, recorded before the queue moves.

Rules that keep the row truthful:
* one row per job id (upsert), whatever the number of attempts or workers;
* a write carries the attempt number it belongs to, and is ignored when the row already belongs
  to a later attempt, so a zombie attempt cannot overwrite the live one; the start of an
  attempt is also taken over a final row whatever its number, because a job retried from
  outside (Node BullMQ, Bull Board) may start counting again at 1;
* bullmq may end a job without running it (the stall limit): that outcome is written too;
* outcome writes (active, retrying, completed, failed) retry until PostgreSQL answers: the
  caller only moves the job in the queue after the write returned, so an outage delays an
  outcome but never loses it. Progress is best effort: it is not an outcome.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from offload.db.pool import RETRYABLE, until_stored
from offload.jobs import JobRef

log = logging.getLogger(__name__)

# Each transition is one statement (one round trip): update the row, then log the event from
# the rows the update touched, so an ignored (stale) write logs nothing.
_EVENT = """
INSERT INTO job_events (job_id, attempt, state, worker_id, message)
SELECT id, attempt, state, worker_id, %(message)s FROM changed
"""

_QUEUED_VALUES = (
    "(%(id{n})s, %(name{n})s, %(queue{n})s, %(upload_id{n})s, %(owner{n})s, %(bucket{n})s,"
    " %(key{n})s, %(revision{n})s, 'queued', %(max_attempts{n})s, %(parent_id{n})s)"
)


def mark_queued_statement(count: int) -> str:
    """Rows for ``count`` jobs queued at once (a flow: the parent and its children), in one
    statement: one round trip whatever the pipeline's length. Parameters are suffixed with
    the job's position (``id0``, ``name0``, ...)."""
    return _mark_queued([str(n) for n in range(count)])


def _mark_queued(suffixes: Sequence[str]) -> str:
    values = ",\n           ".join(_QUEUED_VALUES.format(n=n) for n in suffixes)
    return (
        f"""
WITH changed AS (
    INSERT INTO jobs (id, name, queue, upload_id, owner, bucket, key, revision, state,
                      max_attempts, parent_id)
    VALUES {values}
    ON CONFLICT (id) DO NOTHING
    RETURNING id, attempt, state, worker_id
)"""
        + _EVENT
    )


MARK_QUEUED = _mark_queued([""])

MARK_ACTIVE = (
    """
WITH changed AS (
    INSERT INTO jobs (id, name, queue, upload_id, owner, bucket, key, revision, state,
                      attempt, max_attempts, worker_id, started_at, parent_id)
    VALUES (%(id)s, %(name)s, %(queue)s, %(upload_id)s, %(owner)s, %(bucket)s, %(key)s,
            %(revision)s, 'active', %(attempt)s, %(max_attempts)s, %(worker_id)s, now(),
            %(parent_id)s)
    ON CONFLICT (id) DO UPDATE SET
        state = 'active', attempt = EXCLUDED.attempt, max_attempts = EXCLUDED.max_attempts,
        worker_id = EXCLUDED.worker_id, started_at = now(), finished_at = NULL,
        progress = NULL, result = NULL, updated_at = now()
    WHERE jobs.attempt <= EXCLUDED.attempt OR jobs.state IN ('completed', 'failed')
    RETURNING id, attempt, state, worker_id
)"""
    + _EVENT
)

# A job bullmq fails without running it (a deferred failure: the stall limit, a failed child of
# a flow): the row may be at any in-flight state of the previous attempt, or missing.
MARK_FAILED_UNRUN = (
    """
WITH changed AS (
    INSERT INTO jobs (id, name, queue, upload_id, owner, bucket, key, revision, state,
                      attempt, max_attempts, worker_id, error_message, finished_at, parent_id)
    VALUES (%(id)s, %(name)s, %(queue)s, %(upload_id)s, %(owner)s, %(bucket)s, %(key)s,
            %(revision)s, 'failed', %(attempt)s, %(max_attempts)s, %(worker_id)s,
            %(message)s, now(), %(parent_id)s)
    ON CONFLICT (id) DO UPDATE SET
        state = 'failed', attempt = EXCLUDED.attempt, max_attempts = EXCLUDED.max_attempts,
        worker_id = EXCLUDED.worker_id, error_message = EXCLUDED.error_message,
        error_stack = NULL, result = NULL, finished_at = now(), updated_at = now()
    WHERE jobs.attempt < EXCLUDED.attempt
       OR (jobs.attempt = EXCLUDED.attempt AND jobs.state <> 'failed')
    RETURNING id, attempt, state, worker_id
)"""
    + _EVENT
)

MARK_PROGRESS = """
UPDATE jobs SET progress = %(progress)s, updated_at = now()
WHERE id = %(id)s AND attempt = %(attempt)s AND state = 'active'
"""

MARK_FINISHED = (
    """
WITH changed AS (
    UPDATE jobs SET
        state = %(state)s, result = %(result)s, error_message = %(error_message)s,
        error_stack = %(error_stack)s, finished_at = CASE WHEN %(final)s THEN now() END,
        progress = CASE WHEN %(state)s = 'completed' THEN '100'::jsonb ELSE progress END,
        updated_at = now()
    WHERE id = %(id)s AND attempt = %(attempt)s AND state = 'active'
    RETURNING id, attempt, state, worker_id
)"""
    + _EVENT
)


@dataclass(frozen=True)
class JobIdentity:
    """What the status row needs to know about a job besides its state."""

    job_id: str
    name: str
    queue: str
    ref: JobRef | None
    # The flow parent's job id (a pipeline step's ``finalize``); None for everything else.
    parent_id: str | None = None

    def columns(self) -> dict[str, Any]:
        ref = self.ref
        return {
            "id": self.job_id,
            "parent_id": self.parent_id,
            "name": self.name,
            "queue": self.queue,
            "upload_id": ref.upload_id if ref else None,
            "owner": ref.owner if ref else None,
            "bucket": ref.bucket if ref else "",
            "key": ref.key if ref else "",
            "revision": ref.revision if ref else None,
        }


class StatusStore:
    """Async writer of job transitions over the process's connection pool."""

    def __init__(self, pool: AsyncConnectionPool):
        self._pool = pool

    async def _execute(self, statement: str, params: dict[str, Any]) -> int:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(statement, params)
            return cursor.rowcount

    async def mark_queued(self, job: JobIdentity, max_attempts: int) -> bool:
        params = job.columns() | {"max_attempts": max_attempts, "message": None}
        rows = await until_stored("queued", job.job_id, lambda: self._execute(MARK_QUEUED, params))
        return rows > 0

    async def mark_queued_many(self, jobs: Sequence[tuple[JobIdentity, int]]) -> int:
        """``(job, max_attempts)`` rows queued together (a flow), in one statement; rows that
        exist are left as they are. Returns how many were new."""
        if not jobs:
            return 0
        params: dict[str, Any] = {"message": None}
        for n, (job, max_attempts) in enumerate(jobs):
            columns = job.columns() | {"max_attempts": max_attempts}
            params |= {f"{name}{n}": value for name, value in columns.items()}
        statement = mark_queued_statement(len(jobs))
        label = jobs[0][0].job_id
        return await until_stored("queued", label, lambda: self._execute(statement, params))

    async def mark_active(
        self, job: JobIdentity, attempt: int, max_attempts: int, worker_id: str
    ) -> bool:
        params = job.columns() | {
            "attempt": attempt,
            "max_attempts": max_attempts,
            "worker_id": worker_id,
            "message": None,
        }
        rows = await until_stored("active", job.job_id, lambda: self._execute(MARK_ACTIVE, params))
        return rows > 0

    async def mark_failed_unrun(
        self, job: JobIdentity, attempt: int, max_attempts: int, worker_id: str, message: str
    ) -> bool:
        """A job failed by bullmq itself, without a run (see MARK_FAILED_UNRUN)."""
        params = job.columns() | {
            "attempt": attempt,
            "max_attempts": max_attempts,
            "worker_id": worker_id,
            "message": storable_text(message),
        }
        rows = await until_stored(
            "failed", job.job_id, lambda: self._execute(MARK_FAILED_UNRUN, params)
        )
        return rows > 0

    async def mark_progress(self, job_id: str, attempt: int, progress: Any) -> bool:
        """Best effort: one try, a failure is logged and dropped."""
        params = {"id": job_id, "attempt": attempt, "progress": Jsonb(progress)}
        try:
            return await self._execute(MARK_PROGRESS, params) > 0
        except RETRYABLE as exc:
            log.info("progress not stored: %s", exc.__class__.__name__, extra={"job_id": job_id})
            return False

    async def _finish(self, job_id: str, attempt: int, state: str, **fields: Any) -> bool:
        params = {
            "id": job_id,
            "attempt": attempt,
            "state": state,
            "final": state in ("completed", "failed"),
            "result": None,
            "error_message": None,
            "error_stack": None,
            "message": None,
        } | fields
        rows = await until_stored(state, job_id, lambda: self._execute(MARK_FINISHED, params))
        return rows > 0

    async def mark_completed(self, job_id: str, attempt: int, result: Any) -> bool:
        return await self._finish(job_id, attempt, "completed", result=Jsonb(result))

    async def mark_retrying(self, job_id: str, attempt: int, message: str, stack: str) -> bool:
        return await self._finish_with_error(job_id, attempt, "retrying", message, stack)

    async def mark_failed(self, job_id: str, attempt: int, message: str, stack: str) -> bool:
        return await self._finish_with_error(job_id, attempt, "failed", message, stack)

    async def _finish_with_error(
        self, job_id: str, attempt: int, state: str, message: str, stack: str
    ) -> bool:
        message, stack = storable_text(message), storable_text(stack)
        return await self._finish(
            job_id, attempt, state, error_message=message, error_stack=stack, message=message
        )

    @asynccontextmanager
    async def retry_claim(
        self, job_id: str, attempt: int, *, owner: str, message: str
    ) -> AsyncIterator[RetryClaim]:
        """Claim a failed row for a user's retry (MARK_REQUEUED) and hold the claim while the
        caller moves the job in the queue: the claim commits when the block ends, and is rolled
        back when it raises. The claim is not ``won`` when the row is no longer failed at
        ``attempt`` (another retry claimed it, or a worker already ran it again): the caller
        must not touch the queue then. What else the retry changes (:meth:`RetryClaim.
        reopen_flow`) commits or rolls back with it.

        Holding the claim in an open transaction, rather than writing it and undoing it, is
        what keeps the row truthful whatever fails in between:

        * a concurrent claim waits on the row lock, then finds the row changed (one winner);
        * a worker that takes the retried job at once waits on the lock too, and its
          ``active`` (a later attempt) lands after the claim, never under it;
        * if the queue refuses the retry, or Redis or PostgreSQL fails before the commit, the
          row is still ``failed`` with its error: nothing to undo, so no undo that can fail.
          The one inconsistency left is a retry Redis applied whose claim was lost (PostgreSQL
          died before the commit, or Redis answered too late): the row says ``failed`` while
          the job waits, until the worker that takes it writes ``active``; a retry meanwhile
          gets 409 from the queue. A row is never ``queued`` for a job that is not.

        One call, one try: the caller answers a request, so an outage is its caller's to retry
        (503), unlike the worker's writes."""
        params = {"id": job_id, "attempt": attempt, "owner": owner, "message": message}
        async with self._pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(MARK_REQUEUED, params)
            yield RetryClaim(cursor.rowcount > 0, conn, owner)


@dataclass
class RetryClaim:
    """A user's claim on a failed row (:meth:`StatusStore.retry_claim`), and the transaction
    that holds it."""

    won: bool
    conn: Any  # psycopg.AsyncConnection, in the claim's transaction
    owner: str

    async def reopen_flow(self, parent_id: str | None, upload_id: str | None) -> None:
        """The retried job's pipeline is running again (``offload.flow_retry``): its
        ``finalize`` row (``parent_id``, when the retried job is a step) goes from ``failed``
        back to ``queued``, and the upload from ``failed`` back to ``queued``, without its
        failure. Rows in any other state are left alone: a parent bullmq had not failed yet is
        still ``queued``."""
        if parent_id is not None:
            await self.conn.execute(
                REOPEN_PARENT,
                {"id": parent_id, "owner": self.owner, "message": "a failed step was retried"},
            )
        if upload_id is not None:
            await self.conn.execute(REOPEN_UPLOAD, {"id": upload_id, "owner": self.owner})


# A failed job put back in the queue by a user's retry (StatusStore.retry_claim). Only a row
# that is still ``failed`` at the attempt the caller saw, and is the caller's, moves: a second
# retry of the same failure, or one that comes after a worker has already run the job again,
# changes nothing. The attempt number is kept: bullmq keeps counting attempts, and the row's
# guard on later writes (a worker's ``active`` for attempt + 1) relies on that.
MARK_REQUEUED = (
    """
WITH changed AS (
    UPDATE jobs SET
        state = 'queued', progress = NULL, result = NULL, error_message = NULL,
        error_stack = NULL, worker_id = NULL, finished_at = NULL, updated_at = now()
    WHERE id = %(id)s AND state = 'failed' AND attempt = %(attempt)s
      AND owner = %(owner)s
    RETURNING id, attempt, state, worker_id
)"""
    + _EVENT
)


# A pipeline's finalize row, failed with its step, waits again once the step is retried.
REOPEN_PARENT = (
    """
WITH changed AS (
    UPDATE jobs SET
        state = 'queued', progress = NULL, result = NULL, error_message = NULL,
        error_stack = NULL, worker_id = NULL, finished_at = NULL, updated_at = now()
    WHERE id = %(id)s AND state = 'failed' AND owner = %(owner)s
    RETURNING id, attempt, state, worker_id
)"""
    + _EVENT
)

# The upload of a reopened pipeline: running again, its failure gone until the pipeline ends.
REOPEN_UPLOAD = """
UPDATE uploads SET state = 'queued', failed_step = NULL, error = NULL, finished_at = NULL,
    result_key = NULL, updated_at = now()
WHERE id = %(id)s AND owner = %(owner)s AND state = 'failed'
"""


def storable_text(text: str) -> str:
    """PostgreSQL text cannot hold NUL, and an error message may quote binary input: unstored,
    the failure would leave the row ``active`` while the queue has failed the job."""
    return text.replace("\x00", "\N{REPLACEMENT CHARACTER}")
