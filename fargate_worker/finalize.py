"""``finalize``: the parent of every upload's flow, run in the worker process once every step
(child) has succeeded.

What it does, in this order (each step repeatable, so a retried attempt redoes it safely):

1. gathers each step's result: bullmq's ``getChildrenValues`` (the parent's ``processed`` hash
   in Redis, written atomically with each child's completion), and the children's status rows
   (``jobs.parent_id``), whose ``result`` fills in a value Redis no longer has (a flow rebuilt
   after Redis lost it) and names the children a Node producer may have added without rows;
2. writes ``processed/<owner>/<upload id>/result.json``: the upload, its object and every
   step's result;
3. moves the upload to ``processed`` in PostgreSQL (``offload.db.upload_outcomes``);
4. publishes ``Upload Processed`` on EventBridge (``offload.upload_events``); a failure fails
   the attempt, and the retry repeats 1-4 (at-least-once, never an event before its state).

Why in the worker process and not in a sandbox child like the steps: it parses no uploaded
bytes (only the JSON results our own steps returned, already stored by bullmq and PostgreSQL),
and everything it does needs what a child is denied on purpose: the Redis connection
(``getChildrenValues``), the worker's database role (the upload's final state), EventBridge and
an S3 write outside any one step's outputs. Handing those to a child would widen the sandbox
for no isolation gained. A failed flow ends through the same class (:meth:`Finalizer.fail`),
from the worker's deferred-failure hook.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from fargate_worker.processors.outputs import output_key
from offload.db.upload_outcomes import FinalUpload, UploadOutcomes
from offload.jobs import JobRef
from offload.upload_events import UploadEvent, publish

log = logging.getLogger(__name__)

RESULT_NAME = "result.json"

CHILD_ROWS = """
SELECT id, name, state, result, error_message FROM jobs WHERE parent_id = %(parent_id)s
ORDER BY name, id
"""


class StepNotFinished(RuntimeError):
    """A child of the flow has no result yet (the attempt is retried)."""


class Finalizer:
    """Ends upload flows: ``processed`` with a result document, or ``failed``."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        s3: Callable[[], Any],
        events: Callable[[], Any],
        bus_name: str | None,
    ):
        self._pool = pool
        self._s3 = s3
        self._events = events
        self._bus_name = bus_name
        self.outcomes = UploadOutcomes(pool)

    async def child_rows(self, parent_id: str) -> list[dict[str, Any]]:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(CHILD_ROWS, {"parent_id": parent_id})
            names = [column.name for column in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in await cursor.fetchall()]

    async def steps(self, job: Any) -> dict[str, dict[str, Any]]:
        """Each child's result by step name: ``{"jobId", "result"}``."""
        values = await job.getChildrenValues()  # {child key: return value}
        from_redis = {key.rsplit(":", 1)[-1]: (key, value) for key, value in values.items()}
        rows = {row["id"]: row for row in await self.child_rows(job.id)}
        steps: dict[str, dict[str, Any]] = {}
        for child_id in sorted({*rows, *from_redis}):
            row = rows.get(child_id)
            if child_id in from_redis:
                key, value = from_redis[child_id]
                name = row["name"] if row else await job.backend.connection.conn.hget(key, "name")
            elif row is not None and row["state"] == "completed":
                name, value = row["name"], row["result"]
            else:
                state = row["state"] if row else "unknown"
                raise StepNotFinished(f"step {child_id} has no result yet (it is {state})")
            steps[str(name or child_id)] = {"jobId": child_id, "result": value}
        return steps

    async def run(self, job: Any, ref: JobRef) -> dict[str, Any]:
        """Steps 1-4 of the module docstring; returns the job's own result."""
        steps = await self.steps(job)
        result_key = output_key(ref.key, RESULT_NAME)
        document = {
            "uploadId": ref.upload_id,
            "owner": ref.owner,
            "source": {
                "bucket": ref.bucket,
                "key": ref.key,
                "versionId": ref.version_id,
                "etag": ref.etag,
            },
            "steps": steps,
            "finalizeJobId": job.id,
            "finalizedAt": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        body = json.dumps(document, indent=2, sort_keys=True, default=str).encode("utf-8")
        await asyncio.to_thread(
            self._s3().put_object,
            Bucket=ref.bucket,
            Key=result_key,
            Body=body,
            ContentType="application/json",
        )
        job_ids = [job.id, *(step["jobId"] for step in steps.values())]
        if ref.upload_id and ref.owner:
            final = await self.outcomes.mark_processed(ref, result_key)
            if final is None:
                log.warning(
                    "flow finished for an object its upload no longer names; upload unchanged",
                    extra={"job_id": job.id, "upload_id": ref.upload_id},
                )
            else:
                await self._publish(final, job_ids, result_bucket=ref.bucket, result_key=result_key)
        return {"resultKey": result_key, "steps": sorted(steps)}

    async def fail(
        self, parent_id: str, ref: JobRef, step: str, reason: str, job_ids: list[str]
    ) -> None:
        """The flow of ``ref``'s object failed for good at ``step``: the upload moves to
        ``failed`` (first), then ``Upload Failed`` is published (raises if it cannot be)."""
        if not (ref.upload_id and ref.owner):
            return
        final = await self.outcomes.mark_failed(ref, step, reason)
        if final is None:
            log.warning(
                "flow failed for an object its upload no longer names, or that is processed",
                extra={"job_id": parent_id, "upload_id": ref.upload_id},
            )
            return
        await self._publish(final, job_ids, failed_step=step, reason=reason)

    async def _publish(self, final: FinalUpload, job_ids: list[str], **fields: Any) -> None:
        event = UploadEvent(
            final.id, final.owner, final.state, job_ids, final.finished_at, **fields
        )
        event_id = await asyncio.to_thread(publish, self._events(), event, self._bus_name)
        log.info(
            "upload %s",
            final.state,
            extra={"upload_id": final.id, "state": final.state, "event_id": event_id},
        )
