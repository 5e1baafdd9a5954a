"""The queues one worker process consumes: the main queue and every step queue.

A step with limits (``offload.step_limits``) runs from a queue of its own, because bullmq's
global concurrency and global rate limit are per queue. One process consumes all of them with
one bullmq ``Worker`` per queue (a ``Worker`` serves exactly one queue), all sharing:

* the process's job budget (``fargate_worker.slots.JobSlots`` of ``OFFLOAD_CONCURRENCY``): each
  ``Worker`` may run up to the whole budget (up to its step's cap, which is global anyway) when
  the others are idle, and the total of running jobs stays within it. The sandbox pool has one
  child per slot, so it is shared without ever being oversubscribed;
* the processor (``OffloadWorker._process``) and its status store, metrics and protection.

At start the limits of every step queue are written into the queue's meta hash
(``Queue.setGlobalConcurrency`` / ``setGlobalRateLimit``, removed when a step has none), where
bullmq's ``moveToActive`` script reads them for every worker of every process, Python or Node.
The main queue keeps the worker-local limiter of ``OFFLOAD_LIMITER_MAX`` as before; a step
queue's worker gets none (the script prefers a worker's limiter duration to the queue's).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from bullmq import Queue

from fargate_worker.bull_worker import BullWorker, DeferredFailureHook
from fargate_worker.slots import JobSlots
from offload.pipelines import Step
from offload.queue import queue_options
from offload.settings import Settings
from offload.step_limits import apply_limits, limited_steps

log = logging.getLogger(__name__)

Processor = Callable[[Any, str], Awaitable[Any]]


class WorkerQueues:
    """The ``BullWorker`` of each queue, started and closed together."""

    def __init__(
        self,
        settings: Settings,
        processor: Processor,
        options: dict[str, Any],
        *,
        on_deferred_failure: DeferredFailureHook,
    ):
        self.settings = settings
        self.slots = JobSlots(settings.concurrency)
        self.steps: tuple[Step, ...] = limited_steps(settings)
        self.workers: dict[str, BullWorker] = {
            settings.queue_name: BullWorker(
                settings.queue_name,
                processor,
                options,
                on_deferred_failure=on_deferred_failure,
                slots=self.slots,
            )
        }
        step_options = {key: value for key, value in options.items() if key != "limiter"}
        for step in self.steps:
            assert step.limits is not None  # limited_steps
            cap = step.limits.max_concurrent
            concurrency = min(settings.concurrency, cap or settings.concurrency)
            self.workers[step.queue(settings.queue_name)] = BullWorker(
                step.queue(settings.queue_name),
                processor,
                # A copy per worker: bullmq keeps (and fills in) the dict it is given.
                step_options | {"concurrency": concurrency},
                on_deferred_failure=on_deferred_failure,
                slots=self.slots,
                wake_on_finish=cap is not None,
            )
        self._runs: list[asyncio.Future[Any]] = []

    @property
    def main(self) -> BullWorker:
        return self.workers[self.settings.queue_name]

    def on(self, event: str, listener: Callable[..., Any]) -> None:
        for worker in self.workers.values():
            worker.on(event, listener)

    async def apply_limits(self) -> None:
        """Write each step queue's limits into its meta hash (idempotent; every worker does it
        at start, so a changed setting is in force once the first new task runs)."""
        if not self.steps:
            return
        options = queue_options(self.settings)
        connection = options["connection"]
        try:
            for step in self.steps:
                queue = Queue(step.queue(self.settings.queue_name), options)
                await apply_limits(queue, step.limits)
                log.info(
                    "step queue limits applied",
                    extra={"queue": queue.name, "state": str(step.limits)},
                )
        finally:
            await connection.aclose()

    async def start(self) -> None:
        await self.apply_limits()
        for worker in self.workers.values():
            # bullmq-py gap 2 (docs/design.md): until a connection knows the server version,
            # the worker rounds every blocking wait up to whole seconds.
            await worker.backend.connection.getRedisVersion()
            if worker.backend.blocking_connection is not None:
                await worker.backend.blocking_connection.getRedisVersion()
        self._runs = [asyncio.ensure_future(worker.run()) for worker in self.workers.values()]

    async def close(self, force: bool = False) -> None:
        """Stop taking jobs on every queue; without ``force``, wait for running jobs."""
        results = await asyncio.gather(
            *(worker.close(force=force) for worker in self.workers.values()),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result

    async def wait_stopped(self) -> None:
        if self._runs:
            await asyncio.gather(*self._runs, return_exceptions=True)
