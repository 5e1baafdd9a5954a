"""Keeping the declared schedules (``OFFLOAD_SCHEDULES``) registered as bullmq job schedulers.

Each worker runs :meth:`ScheduleKeeper.run`: a check at start, then one every
``OFFLOAD_SCHEDULE_CHECK_S``. Why every worker and why again and again:

* **Idempotent from any number of workers.** bullmq's ``upsertJobScheduler`` is one Lua script
  (atomic): the scheduler record is keyed by its id and its next job by
  ``repeat:<id>:<millis>``, and an upsert over a scheduler whose next job is still pending
  replaces that job rather than adding one. Twenty workers starting at once therefore leave
  one scheduler and one next job (``tests/test_schedules.py``).
* **Redis may lose them.** A failover to a replica that had not caught up, an eviction, a
  flush: the scheduler record or its next job is gone, and nothing in bullmq brings it back
  (the next iteration is only ever made by a worker taking the current one). A worker that
  finds a declared schedule missing, different from its declaration, or without a pending next
  job registers it again, so a lost schedule is back within one check period while any worker
  runs. The same check repairs a scheduler whose next iteration was never made: bullmq (Node
  and Python alike) makes it in a separate call after the current one became active, and a
  Redis error there only emits an error event.
* **Not on every check.** A schedule that is present, as declared and pending is left alone:
  upserting a cron schedule again recomputes its next time from *now*, so an iteration that is
  due but still waiting for a free worker would be pushed to the next slot and skipped.

Schedulers on the queue that are no longer declared are removed: the declaration is the whole
truth (during a rolling deploy, old and new workers may undo each other's change for a few
check periods; the new declaration wins once the old tasks are gone).

The reconciler and the queue-metrics Lambda are NOT scheduled here: they must run when Redis
has lost everything and when no worker runs, so they stay on EventBridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from bullmq import Queue

from offload.schedules import Schedule

log = logging.getLogger(__name__)

# A next job in one of these states will run (or is running): the scheduler is alive.
_PENDING = {"delayed", "waiting", "prioritized", "active", "waiting-children"}


class ScheduleKeeper:
    """Registers ``schedules`` on ``queue`` and keeps them registered."""

    def __init__(
        self,
        queue: Queue,
        schedules: tuple[Schedule, ...],
        job_options: dict[str, Any],
        interval_s: float,
    ):
        self.queue = queue
        self.schedules = schedules
        self.job_options = job_options
        self.interval_s = interval_s
        self._stopping = asyncio.Event()

    async def ensure(self) -> list[str]:
        """One check: register what is missing, changed or stuck; remove what is no longer
        declared. Returns the ids (re)registered or removed."""
        changed: list[str] = []
        for schedule in self.schedules:
            record = await job_scheduler(self.queue, schedule.id)
            if record and _as_declared(record, schedule) and await self._pending(record):
                continue
            await self.queue.upsertJobScheduler(
                schedule.id, schedule.repeat_options(), schedule.job, {}, self.job_options
            )
            changed.append(schedule.id)
            log.info(
                "schedule %s %s",
                schedule.id,
                "registered" if record is None else "registered again",
                extra={"job_name": schedule.job, "state": _describe(schedule)},
            )
        declared = {schedule.id for schedule in self.schedules}
        for record in await self.queue.getJobSchedulers():
            if record.get("key") not in declared:
                await self.queue.removeJobScheduler(record["key"])
                if record.get("next") is not None:
                    # bullmq removes the next job only while it is delayed (Node alike); one
                    # already due waits in the list and would run once more. Not if running.
                    await self.queue.remove(f"repeat:{record['key']}:{record['next']}")
                changed.append(record["key"])
                log.info("schedule %s removed: no longer declared", record["key"])
        return changed

    async def _pending(self, record: dict[str, Any]) -> bool:
        if record.get("next") is None:
            return False
        state = await self.queue.getJobState(f"repeat:{record['key']}:{record['next']}")
        return state in _PENDING

    async def run(self) -> None:
        """Check now, then every ``interval_s``, until :meth:`stop`. A failed check (Redis
        down) is logged and tried again at the next period: schedules are never worth a crash.
        The stop is an event, not only a cancellation: a cancellation that lands inside a
        library call may be swallowed there, and a loop relying on it would run on (seen: a
        worker that never exited because its check kept going after shutdown)."""
        while not self._stopping.is_set():
            try:
                await self.ensure()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("schedules not checked: %s: %s", exc.__class__.__name__, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)

    def stop(self) -> None:
        """End :meth:`run` after the check in progress, if any."""
        self._stopping.set()


async def job_scheduler(queue: Queue, scheduler_id: str) -> dict[str, Any] | None:
    """``Queue.getJobScheduler``, None when there is no such scheduler.

    **bullmq-py gap 9** (docs/design.md): for an absent scheduler the ``getJobScheduler`` script
    answers ``{nil, nil}``, which reaches Python as an empty array, and the port unpacks it into
    two values: ``ValueError`` instead of the ``undefined`` Node's ``getJobScheduler`` gives.
    Here that ValueError is an absent scheduler (it was absent when the script ran; another
    worker may be registering it right now, and registering it again is harmless)."""
    try:
        record: dict[str, Any] | None = await queue.getJobScheduler(scheduler_id)
        return record
    except ValueError:
        return None


def _as_declared(record: dict[str, Any], schedule: Schedule) -> bool:
    return (
        record.get("name") == schedule.job
        and record.get("pattern") == schedule.cron
        and (record.get("every") if schedule.cron is None else None) == schedule.every_ms
        and record.get("tz") == schedule.tz
    )


def _describe(schedule: Schedule) -> str:
    if schedule.cron is not None:
        return f"cron {schedule.cron}" + (f" ({schedule.tz})" if schedule.tz else "")
    return f"every {schedule.every_ms} ms"
