"""Flows stay Node BullMQ compatible: what a Node FlowProducer and a Node worker do to our
queues, and what ours do to theirs (tests/node: Node BullMQ, locked)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import replace

import pytest
from bullmq import Queue

from offload.flow_retry import retry_step
from offload.jobs import INSPECT, job_id
from offload.pipelines import FINALIZE
from offload.redis_conn import connection_options
from tests.support.events import job_rows, queued_upload, upload_row
from tests.support.flow_trees import finalize_over
from tests.support.harness import running_worker, wait_for
from tests.support.node_peer import node_peer

pytestmark = pytest.mark.integration


def test_a_node_flow_with_a_failed_step_is_retried_by_us_and_finished_by_node(
    redis_url, queue_prefix
):
    """A Node FlowProducer adds the flow, a Node worker fails a step (the parent fails with
    it), our partial retry reopens it, and a Node worker runs the step and then the parent:
    the reopened flow is an ordinary flow to Node."""
    base = {"redis": redis_url, "prefix": queue_prefix}
    added = node_peer("add-flow", base | {"flow": finalize_over(["inspect", "thumbnail"])})
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


def test_a_flow_a_node_producer_adds_is_run_by_our_worker_to_processed(
    settings, moto_endpoint, s3, bucket, redis_url
):
    """A Node FlowProducer adds an upload's flow (finalize over inspect, our job data and
    ids): our worker runs the step in its sandbox and finalize in its process, writing the
    status rows the Node producer did not, result.json and the upload's final state."""
    key, ref = queued_upload(settings, s3, bucket)
    parent_id, child_id = job_id(FINALIZE, ref), job_id(INSPECT, ref)
    flow = {
        "name": FINALIZE,
        "queueName": settings.queue_name,
        "data": ref.to_data(),
        "opts": {"jobId": parent_id, "attempts": 3},
        "children": [
            {
                "name": INSPECT,
                "queueName": settings.queue_name,
                "data": ref.to_data(),
                "opts": {"jobId": child_id, "attempts": 3, "failParentOnFailure": True},
            }
        ],
    }
    added = node_peer(
        "add-flow", {"redis": redis_url, "prefix": settings.queue_prefix, "flow": flow}
    )
    assert sorted(added["ids"]) == sorted([parent_id, child_id])
    worker_settings = replace(
        settings, s3_endpoint_url=moto_endpoint, events_endpoint_url=moto_endpoint
    )

    async def run() -> None:
        async with running_worker(worker_settings):
            await wait_for(lambda: upload_row(settings, key)["state"] == "processed", 30)

    asyncio.run(run())
    rows = {row["id"]: row for row in job_rows(settings, ref.upload_id)}
    assert rows[child_id]["parent_id"] == parent_id and rows[child_id]["state"] == "completed"
    assert rows[parent_id]["state"] == "completed"
    done = upload_row(settings, key)
    result = json.loads(s3.get_object(Bucket=bucket, Key=done["result_key"])["Body"].read())
    assert result["steps"][INSPECT]["jobId"] == child_id
    assert result["steps"][INSPECT]["result"]["sha256"] == hashlib.sha256(b"hello").hexdigest()
