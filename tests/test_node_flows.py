"""Flows stay Node BullMQ compatible: what a Node FlowProducer and a Node worker do to our
queues, and what ours do to theirs (tests/node: Node BullMQ, locked)."""

from __future__ import annotations

import asyncio

import pytest
from bullmq import Queue

from offload.flow_retry import retry_step
from offload.redis_conn import connection_options
from tests.support.node_peer import node_peer

pytestmark = pytest.mark.integration


def _flow(prefix: str, steps: list[str]) -> dict:
    return {
        "name": "finalize",
        "queueName": "steps",
        "data": {},
        "opts": {"jobId": "parent"},
        "children": [
            {
                "name": step,
                "queueName": "steps",
                "data": {},
                "opts": {"jobId": step, "failParentOnFailure": True},
            }
            for step in steps
        ],
    }


def test_a_node_flow_with_a_failed_step_is_retried_by_us_and_finished_by_node(
    redis_url, queue_prefix
):
    """A Node FlowProducer adds the flow, a Node worker fails a step (the parent fails with
    it), our partial retry reopens it, and a Node worker runs the step and then the parent:
    the reopened flow is an ordinary flow to Node."""
    base = {"redis": redis_url, "prefix": queue_prefix}
    added = node_peer("add-flow", base | {"flow": _flow(queue_prefix, ["inspect", "thumbnail"])})
    assert sorted(added["ids"]) == ["inspect", "parent", "thumbnail"]
    failed = node_peer("work", base | {"queue": "steps", "fail": ["thumbnail"], "until": "parent"})
    assert failed["state"] == "failed" and failed["parentSaw"] is None

    async def retry() -> bool:
        queue = Queue(
            "steps", {"connection": connection_options(redis_url), "prefix": queue_prefix}
        )
        try:
            job = await queue.getJob("thumbnail")
            assert job is not None
            return (await retry_step(queue, job)).reopened
        finally:
            await queue.close()

    assert asyncio.run(retry())
    finished = node_peer("work", base | {"queue": "steps", "until": "parent"})
    assert finished["state"] == "completed"
    assert finished["runs"] == ["thumbnail", "finalize"]  # inspect did not run again
    assert finished["parentSaw"] == {
        f"{queue_prefix}:steps:inspect": {"step": "inspect"},
        f"{queue_prefix}:steps:thumbnail": {"step": "thumbnail"},
    }
