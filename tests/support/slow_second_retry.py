"""The API Lambda of the double-click test, as its containers run it (``handler``): the API's
own handler, with one change in third-party code. bullmq's ``Job.retry`` lets the first caller
for a job and attempt through at once; a later caller waits until the job has run again and
failed (at most ``WAIT_S``), then goes on.

That is a second request slower than the job: what a cold container is when the job fails at
once (importing bullmq and connecting to Redis alone take longer), made certain instead of
likely. ``Job.retry`` is the seam because it is the one step of a retry that bullmq makes
atomic by itself; a retry route that lets only one request reach it never waits here."""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from bullmq import Job, Queue

from lambdas.api import handler
from tests.support.harness import wait_for

__all__ = ["handler"]
WAIT_S = 30.0
_retry = Job.retry


async def _ran_again(queue: Queue, job: Job) -> bool:
    if await queue.getJobState(job.id) != "failed":
        return False
    now = await queue.getJob(job.id)
    return now is not None and now.attemptsMade > job.attemptsMade


async def _second_caller_waits(self: Job, state: str = "failed", opts: Any = None) -> None:
    queue = self.queue
    key = f"{queue.prefix}:{queue.name}:test-retry-callers:{self.id}:{self.attemptsMade}"
    # INCR, not redis-py's incr (INCRBY): the API runs as the producer user under the ACL
    if await queue.client.execute_command("INCR", key) > 1:
        with suppress(TimeoutError):
            await wait_for(lambda: _ran_again(queue, self), timeout_s=WAIT_S)
    await _retry(self, state, opts or {})


Job.retry = _second_caller_waits
