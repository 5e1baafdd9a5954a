"""offload.flow_retry on a real Redis: a failed step of a flow is retried, then its parent runs.

Plain bullmq workers run the flows here (the queue layer alone): the parent's processor records
the children's values it sees, so each test shows that the parent ran once, after the retried
step, with every step's result.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from bullmq import FlowProducer, Queue, UnrecoverableError, Worker

from offload.flow_retry import StepRetryError, retry_step
from offload.redis_conn import connection_options
from tests.support.flow_trees import finalize_over

pytestmark = pytest.mark.integration


class Flows:
    """A flow of ``finalize`` over steps in one queue, and a worker whose step processor fails
    the steps named in ``failing`` for good."""

    def __init__(self, redis_url: str, prefix: str):
        self.opts = {"connection": connection_options(redis_url), "prefix": prefix}
        self.queue = Queue("steps", self.opts)
        self.failing: set[str] = set()
        self.runs: list[str] = []
        self.parent_saw: list[dict[str, Any]] = []
        self.worker: Worker | None = None

    async def add(self, steps: list[str]) -> None:
        producer = FlowProducer(self.opts)
        try:
            await producer.add(finalize_over(steps))
        finally:
            await producer.close()

    async def _process(self, job: Any, token: str) -> Any:
        self.runs.append(job.name)
        if job.name == "finalize":
            self.parent_saw.append(await job.getChildrenValues())
            return "done"
        if job.name in self.failing:
            raise UnrecoverableError(f"{job.name} failed")
        return f"{job.name}-result"

    async def start(self) -> None:
        self.worker = Worker("steps", self._process, {**self.opts, "concurrency": 4})

    async def state(self, job_id: str) -> str:
        return str(await self.queue.getJobState(job_id))

    async def wait_state(self, job_id: str, want: str, timeout_s: float = 20.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while (state := await self.state(job_id)) != want:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{job_id} is {state}, not {want}")
            await asyncio.sleep(0.05)

    async def retry(self, job_id: str):
        job = await self.queue.getJob(job_id)
        assert job is not None
        return await retry_step(self.queue, job)

    async def close(self) -> None:
        if self.worker is not None:
            await self.worker.close()
        await self.queue.close()


def _run(redis_url: str, prefix: str, scenario) -> None:
    async def main() -> None:
        flows = Flows(redis_url, prefix)
        try:
            await scenario(flows)
        finally:
            await flows.close()

    asyncio.run(main())


def test_retrying_the_failed_step_runs_it_then_the_parent(redis_url, queue_prefix):
    async def scenario(flows: Flows) -> None:
        flows.failing = {"thumbnail"}
        await flows.add(["inspect", "thumbnail"])
        await flows.start()
        await flows.wait_state("parent", "failed")
        await flows.wait_state("inspect", "completed")
        assert flows.parent_saw == []  # the parent never ran: bullmq failed it unrun

        flows.failing = set()
        outcome = await flows.retry("thumbnail")
        assert outcome.reopened
        await flows.wait_state("parent", "completed")
        assert flows.parent_saw == [
            {
                f"{queue_prefix}:steps:inspect": "inspect-result",
                f"{queue_prefix}:steps:thumbnail": "thumbnail-result",
            }
        ]
        # The step that had succeeded ran once: only the failed one ran again.
        assert flows.runs.count("inspect") == 1 and flows.runs.count("thumbnail") == 2

    _run(redis_url, queue_prefix, scenario)


def test_parent_waits_until_every_failed_step_is_retried(redis_url, queue_prefix):
    async def scenario(flows: Flows) -> None:
        flows.failing = {"a", "b"}
        await flows.add(["a", "b", "c"])
        await flows.start()
        for job_id, state in (("a", "failed"), ("b", "failed"), ("c", "completed")):
            await flows.wait_state(job_id, state)
        await flows.wait_state("parent", "failed")

        flows.failing = set()
        first = await flows.retry("a")
        assert not first.reopened  # b is still unsuccessful: the parent stays failed
        await flows.wait_state("a", "completed")
        assert await flows.state("parent") == "failed"

        second = await flows.retry("b")
        assert second.reopened
        await flows.wait_state("parent", "completed")
        assert len(flows.parent_saw) == 1
        assert sorted(flows.parent_saw[0].values()) == ["a-result", "b-result", "c-result"]

    _run(redis_url, queue_prefix, scenario)


def test_retry_before_the_deferred_failure_is_applied(redis_url, queue_prefix):
    """No worker has fetched the parent yet: it waits in ``wait`` with its deferred failure.
    The retry takes it back to waiting-children without the failure."""

    async def scenario(flows: Flows) -> None:
        flows.failing = {"x"}
        await flows.add(["x"])
        job = await flows.queue.getJob("x")
        assert job is not None
        # Fail the step by hand, as a worker would, while no worker runs the parent.
        worker = Worker("steps", flows._process, {**flows.opts, "autorun": False})
        token = "t1"
        fetched = await worker.getNextJob(token)
        assert fetched.id == "x"
        await fetched.moveToFailed(UnrecoverableError("x failed"), token)
        await worker.close()
        assert await flows.state("parent") == "waiting"
        assert (await flows.queue.getJob("parent")).deferredFailure

        flows.failing = set()
        assert (await flows.retry("x")).reopened
        assert await flows.state("parent") == "waiting-children"
        assert not (await flows.queue.getJob("parent")).deferredFailure
        await flows.start()
        await flows.wait_state("parent", "completed")
        assert list(flows.parent_saw[0].values()) == ["x-result"]

    _run(redis_url, queue_prefix, scenario)


def test_a_step_that_is_not_failed_or_has_no_parent_is_refused(redis_url, queue_prefix):
    async def scenario(flows: Flows) -> None:
        await flows.add(["ok"])
        with pytest.raises(StepRetryError, match="not failed"):
            await flows.retry("ok")  # waiting, not failed
        await flows.queue.add("plain", {}, {"jobId": "plain"})
        with pytest.raises(StepRetryError, match="not a step"):
            await flows.retry("plain")
        # Nothing moved: the step still waits and the parent still waits for it.
        assert await flows.state("ok") == "waiting"
        assert await flows.state("parent") == "waiting-children"

    _run(redis_url, queue_prefix, scenario)
