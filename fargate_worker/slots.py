"""The process's job slots: ``OFFLOAD_CONCURRENCY`` jobs at once, whatever queue they come from.

A worker process consumes several queues (the main one and each step queue), one bullmq
``Worker`` per queue, each sized to the whole budget (any queue may use every slot when the
others are idle). The budget is kept here instead: a ``Worker`` takes a slot right before it
moves a job to active (``BullWorker.moveToActive``) and hands it back when the job is done, so
the sandbox pool (one child per slot) is never oversubscribed and no job is ever taken out of
Redis to wait in this process. A slot is not held while a worker blocks for the queue's marker:
an idle queue costs no slot.

Waiters are served first come, first served, and a finished job's slot goes to a waiter
directly. ``BullWorker`` also stops fetching the next job in the same call that completes one
while another queue waits for a slot (:attr:`contended`), so one queue's backlog cannot keep
every slot for itself.
"""

from __future__ import annotations

import asyncio
from collections import deque


class JobSlots:
    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"a process needs at least one job slot, got {size}")
        self.size = size
        self.used = 0
        self.peak = 0  # the most slots ever held at once (tests read it)
        # (future, owner): the owner (a Worker) may give up its waits when it closes
        self._waiters: deque[tuple[asyncio.Future[bool], object]] = deque()

    @property
    def contended(self) -> bool:
        """Somebody waits for a slot."""
        return any(not future.done() for future, _ in self._waiters)

    async def acquire(self, owner: object) -> bool:
        """Take a slot, waiting for one if need be. False: ``owner`` gave up waiting
        (:meth:`abandon`: it is closing) and holds no slot."""
        if self.used < self.size and not self.contended:
            self._take()
            return True
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append((future, owner))
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.result():
                self.release()  # handed a slot in the same moment as cancelled: give it back
            raise

    def _take(self) -> None:
        self.used += 1
        self.peak = max(self.peak, self.used)

    def release(self) -> None:
        """Give a slot back: straight to the first waiter, if any."""
        while self._waiters:
            future, _ = self._waiters.popleft()
            if not future.done():
                future.set_result(True)  # the slot changes hands; ``used`` stays the same
                return
        self.used -= 1
        if self.used < 0:
            raise RuntimeError("job slot released more often than taken")

    def abandon(self, owner: object) -> None:
        """End ``owner``'s waits: they return False (a closing worker takes no new job)."""
        for future, waiter in self._waiters:
            if waiter is owner and not future.done():
                future.set_result(False)
        self._waiters = deque(item for item in self._waiters if not item[0].done())
