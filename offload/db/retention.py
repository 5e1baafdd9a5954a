"""Retention: final uploads older than the configured age, deleted with their jobs, in batches.

What may go, and why nothing else:

* an upload in a final state (``processed``, ``failed``, ``rejected``, ``aborted``) whose
  ``finished_at`` (else ``updated_at``, for rows from before migration 0004 and for rejected or
  aborted ones) is older than the age, and none of whose jobs is in flight (``queued``,
  ``active``, ``retrying``): a step may still be running for a failed upload;
* with it, every job row of that upload (their ``job_events`` follow through ON DELETE
  CASCADE) and their bullmq entries (job hash, logs, its place in whatever set or list holds
  it), through bullmq's own removal script, queue by queue as each row's ``queue`` says.

Never a job row whose upload is still live: an S3 event delivered late (at least once, sometimes
twice) for a live upload would find no job and run it again. With the upload row gone too, the
same late event finds no upload and is rejected (``offload.s3events``: "no upload row for this
key"). Jobs without an upload (``upload_id`` NULL) are not touched for the same reason: no row
says whether they are live, and deleting them would let a late event run them again.

One transaction per batch, and its order is what keeps a concurrent retry or a late event from
slipping in:

1. DELETE the batch's uploads (the state and the in-flight check are evaluated again on each
   row as it is locked: a retry that made an upload live first keeps it);
2. DELETE their jobs, RETURNING their states: a job that became in flight meanwhile (a retry
   claimed it between 1 and 2) rolls the batch back and the batch is tried again without
   that upload;
3. remove each job from its queue while the rows are still locked (a user's retry of one of
   them waits for the lock and then finds no row); a job bullmq refuses to remove (locked:
   running right now, whatever its row says) rolls the batch back and it is tried again
   without that upload;
4. COMMIT. If the commit fails after 3, the rows are back (final, nothing in flight) and their
   queue entries are gone, which the next run finishes; nothing live was touched.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)

FINAL_UPLOAD_STATES = ("processed", "failed", "rejected", "aborted")
IN_FLIGHT_JOB_STATES = ("queued", "active", "retrying")

DELETE_UPLOADS = """
DELETE FROM uploads u
WHERE u.id IN (
    SELECT c.id FROM uploads c
    WHERE c.state = ANY(%(final)s)
      AND coalesce(c.finished_at, c.updated_at) < now() - make_interval(days => %(days)s)
      AND NOT (c.id = ANY(%(exclude)s))
      AND NOT EXISTS (
          SELECT 1 FROM jobs j WHERE j.upload_id = c.id AND j.state = ANY(%(in_flight)s))
    ORDER BY coalesce(c.finished_at, c.updated_at), c.id
    LIMIT %(limit)s)
  AND u.state = ANY(%(final)s)
  AND NOT EXISTS (
      SELECT 1 FROM jobs j WHERE j.upload_id = u.id AND j.state = ANY(%(in_flight)s))
RETURNING u.id
"""

DELETE_JOBS = """
DELETE FROM jobs WHERE upload_id = ANY(%(uploads)s)
RETURNING id, queue, state, upload_id
"""

# Removes one job from its queue: True when it is gone (or was never there), False when bullmq
# refuses (the job is locked by a worker).
RemoveFromQueue = Callable[[str, str], Awaitable[bool]]


@dataclass
class RetentionReport:
    """What one run did, for its log line and the job's result."""

    uploads: int = 0
    jobs: int = 0
    batches: int = 0
    # Uploads left for a later run: a job became in flight, or bullmq refused to remove one.
    kept_live: list[str] = field(default_factory=list)

    def as_result(self) -> dict[str, object]:
        return {
            "uploadsDeleted": self.uploads,
            "jobsDeleted": self.jobs,
            "batches": self.batches,
            "uploadsKept": len(self.kept_live),
        }


class _Retry(Exception):
    """Roll the batch back and run it again without these uploads."""

    def __init__(self, uploads: set[str]):
        super().__init__(f"{len(uploads)} uploads became live")
        self.uploads = uploads


async def delete_expired(
    pool: AsyncConnectionPool,
    remove_from_queue: RemoveFromQueue,
    *,
    days: int,
    batch: int,
    max_batches: int = 1_000,
) -> RetentionReport:
    """Delete batches until one comes back short (or ``max_batches``, a bound on one run)."""
    report = RetentionReport()
    exclude: set[str] = set()
    while report.batches < max_batches:
        try:
            deleted_uploads, deleted_jobs = await _one_batch(
                pool, remove_from_queue, days=days, batch=batch, exclude=exclude
            )
        except _Retry as retry:
            exclude |= retry.uploads
            report.kept_live.extend(sorted(retry.uploads))
            continue
        if deleted_uploads == 0:
            break
        report.batches += 1
        report.uploads += deleted_uploads
        report.jobs += deleted_jobs
        log.info(
            "retention batch: %d uploads, %d jobs deleted",
            deleted_uploads,
            deleted_jobs,
            extra={"state": f"batch {report.batches}"},
        )
        if deleted_uploads < batch:
            break
    return report


async def _one_batch(
    pool: AsyncConnectionPool,
    remove_from_queue: RemoveFromQueue,
    *,
    days: int,
    batch: int,
    exclude: set[str],
) -> tuple[int, int]:
    async with pool.connection() as conn, conn.transaction():
        cursor = await conn.execute(
            DELETE_UPLOADS,
            {
                "final": list(FINAL_UPLOAD_STATES),
                "in_flight": list(IN_FLIGHT_JOB_STATES),
                "days": days,
                "exclude": sorted(exclude),
                "limit": batch,
            },
        )
        uploads = [row[0] for row in await cursor.fetchall()]
        if not uploads:
            return 0, 0
        cursor = await conn.execute(DELETE_JOBS, {"uploads": uploads})
        jobs = await cursor.fetchall()
        live = {upload for _, _, state, upload in jobs if state in IN_FLIGHT_JOB_STATES}
        if live:
            raise _Retry(live)
        refused = {
            upload
            for job_id, queue, _, upload in jobs
            if not await remove_from_queue(queue, job_id)
        }
        if refused:
            raise _Retry(refused)
        return len(uploads), len(jobs)
