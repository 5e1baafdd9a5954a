"""A job's progress, from its sandbox child to the queue's job (Redis) and its status row.

Progress is best effort and for people watching (the dashboard polls every 2 s): it is written
at most once per ``WRITE_INTERVAL_S``, the first time that long into the job, and only the
newest value. A job shorter than that writes none: its outcome follows at once, and a completed
row says 100. Each write costs a Redis script and a PostgreSQL statement, and an inspect of a
small file reports twice (99, then 100 once its manifest exists): without the interval, those
two writes cost about as much CPU as the rest of the job's bookkeeping
(bench/system_load.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from offload.db.status import StatusStore

log = logging.getLogger(__name__)

WRITE_INTERVAL_S = 1.0


class ProgressForwarder:
    """Called with each progress message of one attempt; ``close()`` when the run is over."""

    def __init__(
        self, job: Any, store: StatusStore, attempt: int, interval_s: float = WRITE_INTERVAL_S
    ):
        self._job = job
        self._store = store
        self._attempt = attempt
        self._interval_s = interval_s
        self._next_write_at = time.monotonic() + interval_s
        self._latest: Any = None
        self._task: asyncio.Task | None = None
        self._waiting = False  # the task sleeps until the next write is due (cancellable)
        self._closed = False

    def __call__(self, progress: Any) -> None:
        self._latest = progress
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        while self._latest is not None and not self._closed:
            due_in = self._next_write_at - time.monotonic()
            if due_in > 0:
                self._waiting = True
                try:
                    await asyncio.sleep(due_in)
                finally:
                    self._waiting = False
                continue
            value, self._latest = self._latest, None
            self._next_write_at = time.monotonic() + self._interval_s
            try:
                await self._job.updateProgress(value)
            except Exception as exc:
                log.info("progress not sent to the queue: %s", exc, extra={"job_id": self._job.id})
            await self._store.mark_progress(self._job.id, self._attempt, value)

    async def close(self) -> None:
        """The run is over: progress not yet due is dropped (the outcome says more), a write
        under way is waited for, so none lands after the outcome."""
        self._closed = True
        if self._task is None:
            return
        if self._waiting:
            self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
