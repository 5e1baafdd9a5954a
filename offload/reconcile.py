"""Reconciliation: PostgreSQL is the source of truth, Redis only dispatches.

Five repairs, each bounded per run:

0. **Lost events.** An upload still ``pending`` whose object is in S3 for longer than
   ``reconcile_after_s``: its S3 event never reached the enqueue Lambda (it ended in the DLQ
   after an outage longer than the event queue's redeliveries, or was never sent). The object
   is taken as the enqueue Lambda takes an event (``accept_object``: size check, jobs, the
   newest version wins). A HEAD per pending row; rows are visited in id order from a cursor,
   as in repair 2.
1. **Stranded uploads.** An upload whose object is in S3 (state ``uploaded``, or ``queued`` but
   without job rows for the object the row names) for longer than ``reconcile_after_s``: its
   flow is started, or completed where the enqueue Lambda left it half done (``finalize`` and
   the steps whose rows are not final, as a tree: same deterministic ids as the enqueue
   Lambda's, so a late S3 event changes nothing; the pipeline from the row's detected type,
   sniffed here when the row has none) and the row is marked ``queued``. This covers an
   enqueue Lambda that stored ``uploaded`` and then lost Redis, messages that ended in the
   DLQ after the row was updated, and a newer version whose jobs the enqueue Lambda
   deferred: it stays ``uploaded`` until no job of an older version is in flight (all
   versions write the same output keys, and the newest must write last).
2. **Lost jobs.** A job row ``queued``/``active``/``retrying`` not updated for
   ``reconcile_after_s`` whose job the queue no longer has (``Queue.getJob`` is None, e.g. the
   newest writes lost in an ElastiCache failover, or a ``queued`` row whose add never reached
   Redis): the row goes back to ``queued`` (attempt 0, so the new run's status writes are
   accepted) with a ``job_events`` entry saying why, then the job is added again under the same
   id. Rows are visited in id order from a cursor kept in Redis, so with more in-flight rows than
   the per-run limit every row is still checked, one page per run.
3. **Unsettled jobs.** The same in-flight rows whose job the queue has in a final state
   (completed or failed) that no worker wrote: an outcome bullmq reached without our worker's
   status write (a Node BullMQ worker, a job moved by hand or from Bull Board, a worker older
   than the deferred-failure hook). The row takes the queue's outcome (result, or reason and
   stack) with a ``job_events`` entry saying so. A job the queue still has in flight needs
   nothing: the worker that runs it writes its row.

4. **Expired uploads.** A pending multipart upload whose latest part URLs expired more than
   ``expired_upload_grace_s`` ago is aborted, row and S3 multipart upload (its parts deleted),
   instead of waiting days for the bucket's lifecycle rule (``offload.expired_uploads``).

Repairs 0-3 only touch rows older than ``reconcile_after_s``, leaving the normal path (row
written, then the job added a few milliseconds later) alone. Jobs are idempotent (same id, same
output keys), so a repair that races a slow normal path costs at most a repeated run.
Operators who remove a job from Redis by hand must also end its row (``failed``): otherwise
this reconciler puts it back.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from psycopg.rows import BaseRowFactory, class_row, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from offload.db.status import storable_text
from offload.db.uploads import Upload, UploadStore, revision_sql
from offload.expired_uploads import abort_expired_uploads
from offload.jobs import JobRef, job_id
from offload.pipelines import FINALIZE, Pipeline, Step, pipeline_for
from offload.priorities import upload_priority
from offload.queue import Producer
from offload.s3events import (
    IN_FLIGHT,
    CurrentObject,
    accept_object,
    head_current_object,
    older_in_flight,
    sniff_object,
    upload_jobs,
    upload_ref,
)
from offload.settings import Settings
from offload.step_limits import queue_for
from offload.user_errors import redact

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

Row = TypeVar("Row")

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 500
_ETAG = re.compile(r"[0-9a-f]{32}(-[0-9]+)?")

_UPLOAD_COLUMNS = (
    "u.id, u.owner, u.bucket, u.key, u.filename, u.content_type, u.size_announced,"
    " u.size_actual, u.etag, u.version_id, u.multipart_upload_id, u.state, u.error,"
    " u.created_at, u.updated_at, u.part_size, u.part_urls_expire_at, u.detected_type,"
    " u.failed_step, u.result_key, u.finished_at, u.tier"
)

STRANDED_UPLOADS = f"""
SELECT {_UPLOAD_COLUMNS} FROM uploads u
WHERE u.updated_at < now() - make_interval(secs => %(after_s)s)
  AND (u.state = 'uploaded'
       OR (u.state = 'queued' AND NOT EXISTS (
           SELECT 1 FROM jobs j WHERE j.upload_id = u.id AND j.revision = {revision_sql("u")})))
ORDER BY u.updated_at, u.id
LIMIT %(limit)s
"""

PENDING_UPLOADS = f"""
SELECT {_UPLOAD_COLUMNS} FROM uploads u
WHERE u.state = 'pending' AND u.created_at < now() - make_interval(secs => %(after_s)s)
  AND u.id > %(cursor)s
ORDER BY u.id
LIMIT %(limit)s
"""

# The main queue's rows and its step queues' (``<queue>-<step>``, offload.step_limits),
# including steps no longer limited: their rows still need checking.
IN_FLIGHT_JOBS = """
SELECT j.id, j.name, j.queue, j.upload_id, j.owner, j.bucket, j.key, j.revision, j.state,
       j.parent_id, j.updated_at, u.version_id AS upload_version_id, u.etag AS upload_etag,
       COALESCE(u.size_actual, u.size_announced) AS upload_size, u.tier AS upload_tier
FROM jobs j LEFT JOIN uploads u ON u.id = j.upload_id
WHERE (j.queue = %(queue)s OR j.queue LIKE %(step_queues)s ESCAPE '\\')
  AND j.state = ANY(%(states)s)
  AND j.updated_at < now() - make_interval(secs => %(after_s)s)
  AND j.id > %(cursor)s
ORDER BY j.id
LIMIT %(limit)s
"""

# Every job of one flow: its finalize (the parent) and its steps.
FLOW_ROWS = """
SELECT id, name, state FROM jobs WHERE id = %(parent_id)s OR parent_id = %(parent_id)s
ORDER BY created_at, id
"""

# Back to queued only if the row is still what we saw (no worker wrote since), in one statement
# with its event, like every status transition.
REQUEUE = """
WITH changed AS (
    UPDATE jobs SET state = 'queued', attempt = 0, worker_id = NULL, progress = NULL,
        started_at = NULL, finished_at = NULL, updated_at = now(), queue = %(queue)s
    WHERE id = %(id)s AND state = %(state)s AND updated_at = %(updated_at)s
    RETURNING id, attempt, state, worker_id
)
INSERT INTO job_events (job_id, attempt, state, worker_id, message)
SELECT id, attempt, state, worker_id, %(message)s FROM changed
"""


# The queue's final state, copied onto a row still in flight, under the same guard as REQUEUE.
SETTLE = """
WITH changed AS (
    UPDATE jobs SET state = %(state)s, attempt = GREATEST(attempt, %(attempt)s),
        result = %(result)s, error_message = %(error_message)s, error_stack = %(error_stack)s,
        progress = CASE WHEN %(state)s = 'completed' THEN '100'::jsonb ELSE progress END,
        finished_at = COALESCE(%(finished_at)s, now()), updated_at = now()
    WHERE id = %(id)s AND state = %(seen_state)s AND updated_at = %(updated_at)s
    RETURNING id, attempt, state, worker_id
)
INSERT INTO job_events (job_id, attempt, state, worker_id, message)
SELECT id, attempt, state, worker_id, %(message)s FROM changed
"""

FINAL_STATES = ("completed", "failed")


@dataclass
class ReconcileReport:
    pending_checked: int = 0
    uploads_found: int = 0
    uploads_checked: int = 0
    uploads_requeued: int = 0
    uploads_deferred: int = 0
    jobs_enqueued: int = 0
    jobs_checked: int = 0
    jobs_missing: int = 0
    jobs_requeued: int = 0
    jobs_unrecoverable: int = 0
    jobs_settled: int = 0
    expired_checked: int = 0
    expired_aborted: int = 0
    expired_abort_failed: int = 0
    cursor_wrapped: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _like_escaped(text: str) -> str:
    """``text`` matched literally by LIKE ... ESCAPE '\\'."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def ref_for_job_row(row: dict[str, Any]) -> JobRef | None:
    """The job's reference rebuilt from its status row (its Redis data is gone). The row keeps
    one ``revision`` (version id, else ETag); the upload row tells which it was, and without
    one an S3 ETag's shape does. None if no reference reproduces the row's id."""
    revision = row["revision"] or None
    common = {
        "bucket": row["bucket"],
        "key": row["key"],
        "owner": row["owner"],
        "upload_id": row["upload_id"],
    }
    candidates = []
    if row.get("upload_version_id") or row.get("upload_etag"):
        candidates.append(
            JobRef(**common, version_id=row["upload_version_id"], etag=row["upload_etag"])
        )
    if revision is None:
        candidates.append(JobRef(**common))
    elif _ETAG.fullmatch(revision):
        candidates.append(JobRef(**common, etag=revision))
    else:
        candidates.append(JobRef(**common, version_id=revision))
    for ref in candidates:
        if job_id(row["name"], ref) == row["id"]:
            return ref
    return None


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        pool: AsyncConnectionPool,
        producer: Producer,
        *,
        limit: int = DEFAULT_LIMIT,
    ):
        self.settings = settings
        self.pool = pool
        self.producer = producer
        self.uploads = UploadStore(pool)
        self.limit = max(1, limit)

    @property
    def cursor_key(self) -> str:
        """Where the repairs keep their places between runs: one hash, a field per repair.
        Outside the queue's own keys (``<prefix>:<queue>:``), where Node BullMQ tools take any
        key for a job; under the same prefix, so the same hash slot in cluster mode. A hash,
        not strings: the producer's Redis user has HGET/HSET for bullmq's job hashes, and no
        GET/SET (which would let it take a job lock; stacks/redis_acl.py)."""
        settings = self.settings
        return f"{settings.queue_prefix}:offload-reconciler:{settings.queue_name}:cursors"

    async def _cursor(self, repair: str) -> str:
        return await self.producer.queue.client.hget(self.cursor_key, repair) or ""

    async def _set_cursor(self, repair: str, value: str) -> None:
        await self.producer.queue.client.hset(self.cursor_key, repair, value)

    async def run(self) -> ReconcileReport:
        report = ReconcileReport()
        await self.repair_lost_events(report)
        await self.repair_expired_uploads(report)  # after 0: it skips objects found there
        await self.repair_stranded_uploads(report)
        await self.repair_lost_jobs(report)
        log.info("reconciliation done", extra=report.as_dict())
        return report

    async def _fetch(
        self, statement: str, params: dict[str, Any], row_factory: BaseRowFactory[Row]
    ) -> list[Row]:
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=row_factory)
            await cursor.execute(statement, params)
            return await cursor.fetchall()

    async def repair_lost_events(self, report: ReconcileReport) -> None:
        uploads: list[Upload] = await self._fetch(
            PENDING_UPLOADS,
            {
                "after_s": self.settings.reconcile_after_s,
                "cursor": await self._cursor("pending-uploads"),
                "limit": self.limit,
            },
            class_row(Upload),
        )
        if uploads:
            from offload.aws import s3_client  # boto3: only when there is something to look at

            s3 = s3_client(self.settings.s3_endpoint_url)
            too_new = datetime.now(UTC) - timedelta(seconds=self.settings.reconcile_after_s)

            async def head_current(bucket: str, key: str) -> CurrentObject | None:
                return await asyncio.to_thread(head_current_object, s3, bucket, key)

            async def sniff(upload: Upload) -> str | None:
                return await asyncio.to_thread(sniff_object, s3, upload)

            for upload in uploads:
                report.pending_checked += 1
                current = await head_current(upload.bucket, upload.key)
                if current is None or (current.last_modified or too_new) > too_new:
                    continue  # nothing there yet, or so new that its event may still come
                outcome = await accept_object(
                    current.created_event(upload.bucket, upload.key),
                    self.uploads,
                    self.producer.start_flow,
                    lambda upload_id: upload_jobs(self.pool, upload_id),
                    head_current,
                    sniff,
                )
                report.uploads_found += 1
                log.warning(
                    "upload object found without its S3 event",
                    extra={
                        "upload_id": upload.id,
                        "state": outcome.status,
                        "reason": outcome.reason,
                        "job_ids": list(outcome.job_ids),
                    },
                )
        # A short page means the end of the id range: start again from the beginning.
        await self._set_cursor(
            "pending-uploads", uploads[-1].id if len(uploads) == self.limit else ""
        )

    async def repair_expired_uploads(self, report: ReconcileReport) -> None:
        def s3() -> S3Client:
            from offload.aws import s3_client  # boto3: only when there is something to abort

            return s3_client(self.settings.s3_endpoint_url)

        expired = await abort_expired_uploads(
            self.pool, s3, self.settings.expired_upload_grace_s, self.limit
        )
        report.expired_checked += expired.checked
        report.expired_aborted += expired.aborted
        report.expired_abort_failed += expired.abort_failed

    async def repair_stranded_uploads(self, report: ReconcileReport) -> None:
        uploads: list[Upload] = await self._fetch(
            STRANDED_UPLOADS,
            {"after_s": self.settings.reconcile_after_s, "limit": self.limit},
            class_row(Upload),
        )
        for upload in uploads:
            report.uploads_checked += 1
            jobs = await upload_jobs(self.pool, upload.id)
            if older_in_flight(upload, jobs):
                report.uploads_deferred += 1  # checked again on the next run
                continue
            # The object's flow, started or repaired as a flow (offload.flows.nodes_to_add): jobs
            # whose rows are final are not added again (retention may have removed them from
            # Redis, and a re-added finished job would run again); the others are re-added
            # under their parent, a no-op for those Redis still has.
            states = {job.id: job.state for job in jobs if (job.revision or "") == upload.revision}
            detected = upload.detected_type or await self._sniff(upload)
            added = await self.producer.start_flow(
                pipeline_for(detected), upload_ref(upload), states, upload
            )
            report.jobs_enqueued += len([jid for jid in added if jid not in states])
            if await self.uploads.mark_queued(upload, detected_type=detected) is not None:
                report.uploads_requeued += 1
                log.info(
                    "stranded upload queued",
                    extra={"upload_id": upload.id, "state": upload.state},
                )

    async def _sniff(self, upload: Upload) -> str | None:
        from offload.aws import s3_client  # boto3: only when there is something to look at

        s3 = s3_client(self.settings.s3_endpoint_url)
        return await asyncio.to_thread(sniff_object, s3, upload)

    async def repair_lost_jobs(self, report: ReconcileReport) -> None:
        cursor = await self._cursor("jobs")
        rows = await self._fetch(
            IN_FLIGHT_JOBS,
            {
                "queue": self.settings.queue_name,
                "step_queues": _like_escaped(self.settings.queue_name) + "-%",
                "states": list(IN_FLIGHT),
                "after_s": self.settings.reconcile_after_s,
                "cursor": cursor,
                "limit": self.limit,
            },
            dict_row,
        )
        for row in rows:
            report.jobs_checked += 1
            queue = self.producer.queue_named(row["queue"])
            job = await queue.getJob(row["id"])
            if job is not None:
                # finishedOn is set only by a move to completed/failed (a retry clears it)
                if job.finishedOn and (state := await queue.getJobState(job.id)) in FINAL_STATES:
                    report.jobs_settled += await self._settle(row, job, state)
                continue
            report.jobs_missing += 1
            result = await self._requeue(row)
            if result == "requeued":
                report.jobs_requeued += 1
            elif result == "unrecoverable":
                report.jobs_unrecoverable += 1
        # A short page means the end of the id range: start again from the beginning.
        report.cursor_wrapped = len(rows) < self.limit
        await self._set_cursor("jobs", "" if report.cursor_wrapped else rows[-1]["id"])

    async def _requeue(self, row: dict[str, Any]) -> str:
        fields = {"job_id": row["id"], "upload_id": row["upload_id"], "state": row["state"]}
        ref = ref_for_job_row(row)
        if ref is None:
            log.error("lost job cannot be rebuilt from its row; left as is", extra=fields)
            return "unrecoverable"
        message = f"re-enqueued by the reconciler: job missing from the queue (was {row['state']})"
        # Into the queue its step runs from now (a step whose limits changed since moved), and
        # the row says so: the next run looks for it there.
        queue = queue_for(self.settings, row["name"])
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                REQUEUE,
                {
                    "id": row["id"],
                    "state": row["state"],
                    "updated_at": row["updated_at"],
                    "message": message,
                    "queue": queue,
                },
            )
            changed = cursor.rowcount > 0
        if not changed:
            return "changed"  # a worker wrote in between: the job is alive after all
        priority = upload_priority(self.settings, row["upload_size"], row["upload_tier"])
        if row["parent_id"] or row["name"] == FINALIZE:
            await self._requeue_in_flow(row, ref, queue, priority)
        else:
            await self.producer.enqueue(row["name"], ref, {"priority": priority}, queue=queue)
        log.warning("lost job re-enqueued", extra=fields)
        return "requeued"

    async def _requeue_in_flow(
        self, row: dict[str, Any], ref: JobRef, queue: str, priority: int
    ) -> None:
        """A lost job of an upload's flow comes back as part of its flow, never as a lone job:
        a lost step whose parent bullmq still has is added under that parent (its result then
        reaches it, and its failure fails it); a lost parent, or a step whose parent is lost
        too, is rebuilt as a flow (``Producer.start_flow``) from the flow's status rows: the
        parent and every step that has not completed (a completed one is not run again:
        ``finalize`` reads its result from its row)."""
        parent_id = row["parent_id"] or row["id"]
        main = self.settings.queue_name
        if row["parent_id"] and await self.producer.queue_named(main).getJob(parent_id):
            parent = {"id": parent_id, "queue": f"{self.settings.queue_prefix}:{main}"}
            opts = {"priority": priority, "parent": parent, "failParentOnFailure": True}
            await self.producer.enqueue(row["name"], ref, opts, queue=queue)
            return
        async with self.pool.connection() as conn:
            cursor = await conn.execute(FLOW_ROWS, {"parent_id": parent_id})
            rows = await cursor.fetchall()
        # The steps the flow was started with (its rows), not the pipeline as declared today.
        steps = tuple(Step(name) for job, name, _ in rows if job != parent_id)
        states = {job: state for job, _, state in rows}
        pipeline = Pipeline("rebuilt", steps)
        await self.producer.start_flow(pipeline, ref, states, priority=priority)

    def _bucket_names(self, row: dict[str, Any]) -> tuple[str, ...]:
        return (self.settings.upload_bucket, row.get("bucket") or "")

    async def _settle(self, row: dict[str, Any], job: Any, state: str) -> int:
        """Copy the queue's final outcome onto the row; 1 if it moved, 0 if a worker wrote it
        in between (the row is then the worker's business again)."""
        failed = state == "failed"
        message = f"settled by the reconciler: the queue has the job {state} (was {row['state']})"
        params = {
            "id": row["id"],
            "seen_state": row["state"],
            "updated_at": row["updated_at"],
            "state": state,
            "attempt": max(job.attemptsMade, job.attemptsStarted),
            "result": None if failed else Jsonb(job.returnvalue),
            # The reason is shown to the job's user (whoever wrote it: our worker stores a
            # public one, another tool may not): redacted; the whole text goes to the stack.
            "error_message": (
                storable_text(redact(job.failedReason or "", self._bucket_names(row)))
                if failed
                else None
            ),
            "error_stack": (
                storable_text(job.stacktrace[-1] if job.stacktrace else job.failedReason or "")
                or None
                if failed
                else None
            ),
            "finished_at": datetime.fromtimestamp(job.finishedOn / 1000, UTC),
            "message": message,
        }
        async with self.pool.connection() as conn:
            cursor = await conn.execute(SETTLE, params)
        if cursor.rowcount == 0:
            return 0
        log.warning(
            "job row settled from the queue",
            extra={"job_id": row["id"], "upload_id": row["upload_id"], "state": state},
        )
        return 1
