"""bullmq's Worker with the gaps of bullmq-py 3.4.4 that live in its run loop closed.

Each override names the gap it closes (numbered as in docs/design.md, "bullmq-py 3.4.4 gaps");
the rest of the worker (status, sandbox, shutdown) is ``fargate_worker.worker``'s business.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from bullmq import Worker

from fargate_worker.slots import JobSlots

log = logging.getLogger(__name__)

DeferredFailureHook = Callable[[Any], Awaitable[None]]


class BullWorker(Worker):
    """**Rate limiter (gap 3).** When the limiter is hit, moveToActive returns how long the limit
    lasts, but the Python worker ignores it and blocks for the whole drainDelay on the marker
    (no marker is added when the limit lifts), so it processes far below the configured rate.
    Like the Node worker, wait exactly for the limit to lift, then try again.

    **Fetch next on completion.** Like the Node worker, completing a job fetches the next one in
    the same script call (``moveToFinished`` with ``fetchNext``): one Redis round trip per job
    instead of two on the worker's single command connection, which every slot shares.
    bullmq-py's processJob never asks for it; here its ``moveToCompleted`` asks (unless the
    worker is closing or paused) and the job it returns is handed back to the run loop, which
    processes the result of a finished processJob task like a fetched job. The completion
    itself is unchanged: it still happens only after the processor (and so the status write in
    PostgreSQL) has returned.

    **Stalled check at start (gap 7).** bullmq-py runs its first stalled-job check one full
    ``stalledInterval`` after the worker starts; Node runs one at start. While workers die
    sooner than that (a crash loop, a rolling deploy, Spot churn), abandoned jobs were never
    recovered. The check is throttled across workers (at most one per ``stalledInterval``) and
    takes two passes (one marks the active jobs, a later one moves those whose lock expired), so
    a job abandoned at t is back in the queue by about t + lockDuration + 2 * stalledInterval as
    long as workers keep starting or living that long.

    **Deferred failures (gap 8).** A job past ``maxStalledCount`` (or a flow parent whose child
    failed) is marked by bullmq with a deferred failure, and the next worker that fetches it
    moves it to failed without calling the processor. ``on_deferred_failure`` is awaited
    first, so the status store records that outcome before the queue moves, as for every other
    outcome. If it raises, the job is left as it is: its lock expires and the stalled check
    hands it out again, still carrying its deferred failure.

    **Global concurrency wake-up (gap 10)** and **shared job slots** (a process consuming several
    queues, ``fargate_worker.queues``): see ``_wake_other_workers`` and ``moveToActive``."""

    def __init__(
        self,
        name: str,
        processor: Callable[..., Awaitable[Any]],
        opts: dict[str, Any],
        *,
        on_deferred_failure: DeferredFailureHook,
        slots: JobSlots | None = None,
        wake_on_finish: bool = False,
    ):
        super().__init__(name, processor, opts)
        self._on_deferred_failure = on_deferred_failure
        self._fetched: dict[str, list] = {}
        # The process's budget shared with the workers of its other queues (fargate_worker.slots);
        # None: this worker's own concurrency is the only bound.
        self._slots = slots
        self._wake_on_finish = wake_on_finish
        move_to_completed = self.backend.moveToCompleted

        async def move_and_fetch(job, return_value, remove_on_complete, token, fetch_next=True):
            # Not while another queue waits for a slot: the slot goes back to the waiters.
            fetch = not (self.closing or self.paused or (slots is not None and slots.contended))
            outcome = await move_to_completed(
                job, return_value, remove_on_complete, token, fetch_next=fetch
            )
            if fetch and outcome and outcome.get("result"):
                self._fetched[token] = outcome["result"]
            return outcome

        self.backend.moveToCompleted = move_and_fetch

    async def run(self) -> None:
        first_check = asyncio.ensure_future(self.runStalledJobsCheck())
        try:
            await super().run()
        finally:
            await asyncio.gather(first_check, return_exceptions=True)

    async def moveToActive(self, token: str):  # noqa: N802 - bullmq's name
        """**Shared job slots.** A slot of the process (``fargate_worker.slots``) is taken
        before a job leaves the queue and kept by the job; without a job it goes back."""
        if self._slots is None:
            return await super().moveToActive(token)
        if not await self._slots.acquire(self):
            return None  # closing
        job = None
        try:
            if not (self.closing or self.paused):
                job = await super().moveToActive(token)
        finally:
            if job is None:
                self._slots.release()
        return job

    async def close(self, force: bool = False) -> None:
        if self._slots is not None:
            self.closing = True  # before the waits end, so that none of them takes a job
            self._slots.abandon(self)
        await super().close(force)

    async def processJob(self, job: Any, token: str):  # noqa: N802 - bullmq's name
        next_job = None
        try:
            next_job = await self._process_job(job, token)
        finally:
            if self._slots is not None and next_job is None:
                self._slots.release()  # a fetched next job keeps this job's slot
        if next_job is None and self._wake_on_finish:
            await self._wake_other_workers()
        return next_job

    async def _wake_other_workers(self) -> None:
        """**Global concurrency wake-up (gap 10).** While a queue is at its global concurrency,
        bullmq's scripts add no marker for new or retried jobs, and finishing a job adds none
        either: only the worker that finishes may take the next job, in the same call
        (``fetchNext``). When it does not (a failure, a slot handed to another queue, a
        closing worker), every other worker sleeps on the marker until its ``drainDelay`` runs
        out, and the step runs below its cap. A base marker, as the scripts add for a new job,
        wakes one of them; if there is nothing to take after all, it only costs a
        ``moveToActive`` that returns nothing."""
        try:
            await self.client.zadd(self.keys["marker"], {"0": 0})
        except Exception as exc:  # the wake-up is an optimisation: never fail a job for it
            log.warning("could not wake the queue's other workers: %s", exc)

    async def _process_job(self, job: Any, token: str):
        if job.deferredFailure:
            try:
                await self._on_deferred_failure(job)
            except Exception as exc:
                log.error(
                    "deferred failure not recorded; the job is left to stalled recovery: %s",
                    exc,
                    extra={"job_id": job.id},
                )
                return None
        try:
            await super().processJob(job, token)
        finally:
            fetched = self._fetched.pop(token, None)
        if fetched is None:
            return None
        job_data, job_id, limit_until, delay_until = fetched
        next_job = await self.nextJobFromJobData(
            job_data, job_id, limit_until or 0, delay_until or 0, token
        )
        if next_job:
            self.emit("active", next_job, "waiting")
        return next_job

    async def getNextJob(self, token: str):  # noqa: N802 - bullmq's name
        if self.limitUntil > 0 and not self.closing:
            wait_s = self.limitUntil / 1000
            self.limitUntil = 0
            await asyncio.sleep(wait_s)
            if self.closing:
                return None
            job = await self.moveToActive(token)
            if job:
                self.emit("active", job, "waiting")
            return job
        return await super().getNextJob(token)
