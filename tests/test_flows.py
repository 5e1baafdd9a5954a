"""Upload pipelines as bullmq flows, on real Redis and PostgreSQL with moto S3 and EventBridge:
``finalize`` after every step, the upload's final state, its result.json and its event; one
flow per object however often it is started."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

from offload.jobs import INSPECT, JobRef
from offload.pipelines import FINALIZE, Pipeline, Step
from offload.queue import open_queue
from offload.upload_events import FAILED, PROCESSED, SOURCE
from tests.support.eventbridge import Subscription, subscribe
from tests.support.events import (
    insert_upload,
    invoke_enqueue,
    job_rows,
    queued_upload,
    s3_body,
    s3_record,
    sqs_event,
    sqs_record,
    upload_row,
)
from tests.support.harness import job_events, producer, running_worker, wait_for, wait_for_state
from tests.support.redis_acl import as_user
from tests.support.servers import unique_name

NOOP_THEN_FAIL = Pipeline("test-failing", (Step("noop"), Step("fail_permanently")))
NOOP_AND_SLEEP = Pipeline("test-slow", (Step("noop"), Step("sleep")))
ONLY_NOOP = Pipeline("test-noop", (Step("noop"),))


async def _redis_flow(settings, parent_id: str) -> dict[str, Any]:
    """What Redis holds of a flow: the parent's state and its pending and processed children
    (read as the worker: the producer's Redis user has no SMEMBERS, tests/support/redis_acl.py)."""
    queue = open_queue(as_user(settings, "worker"))
    try:
        client = queue.client
        parent_key = f"{settings.queue_prefix}:{settings.queue_name}:{parent_id}"
        return {
            "parent_state": await queue.getJobState(parent_id),
            "dependencies": sorted(await client.smembers(f"{parent_key}:dependencies")),
            "processed": sorted(await client.hgetall(f"{parent_key}:processed")),
        }
    finally:
        await queue.close()


def test_an_upload_whose_steps_succeed_ends_processed_with_result_and_event(
    lambda_env, settings, pipeline_settings, s3, bucket, bus
):
    """Through the enqueue Lambda (sniff, flow) and a real worker: the upload reaches
    ``processed``, result.json holds every step's result, and one event says so."""
    key = insert_upload(settings, bucket, size=5)
    etag = s3.put_object(Bucket=bucket, Key=key, Body=b"hello")["ETag"].strip('"')
    record = s3_body(s3_record(bucket, key, 5, etag))
    assert invoke_enqueue(sqs_event([sqs_record(record)])) == {"batchItemFailures": []}
    upload = upload_row(settings, key)
    assert (upload["state"], upload["detected_type"]) == ("queued", "text/plain")
    rows = {row["name"]: row for row in job_rows(settings, upload["id"])}
    assert set(rows) == {FINALIZE, INSPECT}
    assert rows[INSPECT]["parent_id"] == rows[FINALIZE]["id"]

    async def go() -> None:
        async with running_worker(pipeline_settings):
            await wait_for(lambda: upload_row(settings, key)["state"] == "processed", 30)
            await wait_for_state(settings, rows[FINALIZE]["id"], "completed")

    asyncio.run(go())
    upload = upload_row(settings, key)
    assert upload["result_key"] == f"processed/{upload['owner']}/{upload['id']}/result.json"
    assert upload["finished_at"] is not None and upload["failed_step"] is None
    result = json.loads(s3.get_object(Bucket=bucket, Key=upload["result_key"])["Body"].read())
    inspect = result["steps"][INSPECT]
    assert inspect["jobId"] == rows[INSPECT]["id"]
    assert inspect["result"]["sha256"] == job_rows(settings, upload["id"])[1]["result"]["sha256"]
    assert inspect["result"]["content_type"] == "text/plain"
    assert (result["uploadId"], result["owner"]) == (upload["id"], upload["owner"])
    assert result["source"] == {"bucket": bucket, "key": key, "versionId": None, "etag": etag}

    (event,) = bus.events(1)
    assert (event["source"], event["detail-type"]) == (SOURCE, PROCESSED)
    detail = event["detail"]
    assert detail["uploadId"] == upload["id"] and detail["owner"] == upload["owner"]
    assert detail["state"] == "processed"
    assert sorted(detail["jobIds"]) == sorted(row["id"] for row in rows.values())
    assert detail["result"] == {"bucket": bucket, "key": upload["result_key"]}
    assert bus.pending() == 0

    # A late duplicate of the event changes nothing: the upload is done with this object.
    assert invoke_enqueue(sqs_event([sqs_record(record)])) == {"batchItemFailures": []}
    assert upload_row(settings, key)["state"] == "processed"
    assert len(job_rows(settings, upload["id"])) == 2


def test_a_step_failing_for_good_fails_the_upload_naming_the_step(
    settings, pipeline_settings, s3, bucket, bus
):
    key, ref = queued_upload(settings, s3, bucket)

    async def go() -> tuple[str, ...]:
        async with producer(settings) as made:
            ids = await made.start_flow(NOOP_THEN_FAIL, ref, {})
        async with running_worker(pipeline_settings):
            await wait_for(lambda: upload_row(settings, key)["state"] == "failed", 30)
            await wait_for_state(settings, ids[0], "failed")
        return ids

    parent_id, noop_id, failing_id = asyncio.run(go())
    upload = upload_row(settings, key)
    rows = {row["id"]: row for row in job_rows(settings, ref.upload_id)}
    assert upload["failed_step"] == "fail_permanently"
    # the step's public reason, as its job shows it
    assert upload["error"] == rows[failing_id]["error_message"]
    assert upload["error"] == f"PermanentJobError: not an image: {key}"
    assert upload["result_key"] is None and upload["finished_at"] is not None
    assert rows[failing_id]["state"] == "failed" and rows[failing_id]["attempt"] == 1
    assert rows[noop_id]["state"] == "completed"
    assert rows[parent_id]["state"] == "failed"  # without running: no 'active' event
    assert "active" not in [e["state"] for e in job_events(settings, parent_id)]
    result_key = f"processed/{ref.owner}/{ref.upload_id}/result.json"
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=result_key)

    (event,) = bus.events(1)
    assert (event["source"], event["detail-type"]) == (SOURCE, FAILED)
    assert event["detail"]["failedStep"] == "fail_permanently"
    assert event["detail"]["reason"] == upload["error"]
    assert sorted(event["detail"]["jobIds"]) == sorted(rows)


def test_starting_the_same_flow_again_and_at_once_starts_one(settings, s3, bucket):
    """Duplicate S3 events, replays and the reconciler all start the same tree: one parent
    waiting for its children, each job once in Redis and once in PostgreSQL."""
    _, ref = queued_upload(settings, s3, bucket)

    async def go() -> list[tuple[str, ...]]:
        async with producer(settings) as made:
            first = await made.start_flow(NOOP_AND_SLEEP, ref, {})
            again = await asyncio.gather(
                *(made.start_flow(NOOP_AND_SLEEP, ref, {}) for _ in range(3))
            )
            return [first, *again]

    starts = asyncio.run(go())
    assert len(set(starts)) == 1  # the same ids every time
    parent_id, *children = starts[0]
    rows = job_rows(settings, ref.upload_id)
    assert sorted(row["id"] for row in rows) == sorted(starts[0])
    assert {row["parent_id"] for row in rows if row["id"] != parent_id} == {parent_id}
    for row in rows:
        assert [e["state"] for e in job_events(settings, row["id"])] == ["queued"]
    flow = asyncio.run(_redis_flow(settings, parent_id))
    prefix = f"{settings.queue_prefix}:{settings.queue_name}:"
    assert flow == {
        "parent_state": "waiting-children",
        "dependencies": sorted(prefix + child for child in children),
        "processed": [],
    }

    async def waiting() -> int:
        queue = open_queue(settings)
        try:
            # Prioritised (every upload job has its upload's priority), or waiting.
            return sum((await queue.getJobCounts("wait", "prioritized")).values())
        finally:
            await queue.close()

    assert asyncio.run(waiting()) == 2  # the two children, once each


def test_a_restart_after_a_step_finished_does_not_run_it_again(
    settings, pipeline_settings, s3, bucket
):
    """A step that completed (and that retention then removed from Redis) is not added again:
    bullmq's addJob would create it anew under its id and run it a second time (shown below),
    so a start adds only the steps whose rows are not completed (offload.flows.nodes_to_add);
    finalize still gets the finished step's result."""
    key, ref = queued_upload(settings, s3, bucket)
    ref = replace(ref, key=key)
    slow = replace(NOOP_AND_SLEEP, steps=(Step("noop"), Step("sleep")))
    # the sleep step sleeps for its key's worth of seconds: a key of its own for this test
    sleepy = JobRef(bucket, "3", etag=ref.etag, owner=ref.owner, upload_id=ref.upload_id)

    async def go() -> tuple[str, ...]:
        async with producer(replace(settings, remove_on_complete=True)) as made:
            ids = await made.start_flow(slow, sleepy, {})
            parent_id, noop_id, sleep_id = ids
            async with running_worker(pipeline_settings):
                await wait_for_state(settings, noop_id, "completed")
                await wait_for_state(settings, sleep_id, "active")

                # Removed on completion: the row is written first, then bullmq moves (and
                # removes) the job, so wait for Redis to follow.
                async def removed() -> bool:
                    return await made.queue.getJob(noop_id) is None

                await wait_for(removed, 10)
                states = {row["id"]: row["state"] for row in job_rows(settings, ref.upload_id)}
                assert await made.start_flow(slow, sleepy, states) == (parent_id, sleep_id)
                await wait_for_state(settings, parent_id, "completed", timeout_s=30)
            # What the guard prevents: the same tree added whole re-creates the removed step.
            assert await made.queue.getJob(noop_id) is None
            await made.flows.add(
                {
                    "name": FINALIZE,
                    "queueName": settings.queue_name,
                    "data": sleepy.to_data(),
                    "opts": {"jobId": f"{parent_id}-copy"},
                    "children": [
                        {"name": "noop", "queueName": settings.queue_name, "data": {},
                         "opts": {"jobId": noop_id}},
                    ],
                }
            )  # fmt: skip
            assert await made.queue.getJobState(noop_id) == "waiting"
        return ids

    parent_id, noop_id, _ = asyncio.run(go())
    actives = [e for e in job_events(settings, noop_id) if e["state"] == "active"]
    assert len(actives) == 1
    parent = {row["id"]: row for row in job_rows(settings, ref.upload_id)}[parent_id]
    assert parent["result"]["steps"] == ["noop", "sleep"]
    result = json.loads(s3.get_object(Bucket=bucket, Key="processed/3.result.json")["Body"].read())
    assert result["steps"]["noop"] == {"jobId": noop_id, "result": {"ok": True}}
    assert result["steps"]["sleep"]["result"] == {"slept": 3.0}


def test_an_eventbridge_refusal_keeps_the_final_state_and_the_retry_publishes_it(
    settings, moto_endpoint, s3, bucket
):
    """State first, then the event, at least once: while EventBridge refuses the event (here:
    its bus does not exist yet), the upload is already ``processed`` and finalize's attempt
    fails; once the bus is there, the retry publishes it, the state unchanged."""
    key, ref = queued_upload(settings, s3, bucket)
    bus_name = unique_name("late-bus").replace("_", "-")
    pipeline_settings = replace(
        settings,
        s3_endpoint_url=moto_endpoint,
        events_endpoint_url=moto_endpoint,
        event_bus_name=bus_name,
    )
    slow_retries = replace(settings, default_attempts=10, default_backoff_ms=1000)

    async def go() -> tuple[dict[str, Any], Subscription]:
        async with producer(slow_retries) as made:
            parent_id, _ = await made.start_flow(ONLY_NOOP, ref, {})
        async with running_worker(pipeline_settings):
            await wait_for_state(settings, parent_id, "retrying")
            processed = upload_row(settings, key)
            subscription = subscribe(moto_endpoint, bus_name)
            await wait_for_state(settings, parent_id, "completed", timeout_s=30)
        return processed, subscription

    processed, subscription = asyncio.run(go())
    assert processed["state"] == "processed" and processed["finished_at"] is not None
    parent = next(row for row in job_rows(settings, ref.upload_id) if row["name"] == FINALIZE)
    assert parent["attempt"] >= 2
    failed_attempts = [
        event for event in job_events(settings, parent["id"]) if event["state"] == "retrying"
    ]
    assert failed_attempts[0]["message"] == (
        "EventNotPublished: Upload Processed event not published (ResourceNotFoundException)"
    )
    (event,) = subscription.events(1)
    assert event["detail-type"] == PROCESSED and event["detail"]["uploadId"] == ref.upload_id
    final = upload_row(settings, key)
    assert (final["state"], final["finished_at"]) == ("processed", processed["finished_at"])


def test_what_a_start_adds_follows_the_flows_status_rows():
    from offload.flows import nodes_to_add, plan_flow

    plan = plan_flow(NOOP_AND_SLEEP, JobRef("b", "k", etag="e"), "uploads")
    parent, noop, sleep = (node.job_id for node in plan.nodes)

    def added(**states: str) -> list[str]:
        by_id = {{"parent": parent, "noop": noop, "sleep": sleep}[k]: v for k, v in states.items()}
        return [node.name for node in nodes_to_add(plan, by_id)]

    assert added() == [FINALIZE, "noop", "sleep"]
    assert added(parent="queued", noop="active", sleep="queued") == [FINALIZE, "noop", "sleep"]
    assert added(parent="queued", noop="completed") == [FINALIZE, "sleep"]
    assert added(parent="queued", noop="completed", sleep="completed") == [FINALIZE]
    assert added(parent="queued", noop="failed") == []  # the parent fails with it
    assert added(parent="completed") == [] and added(parent="failed") == []
    assert {node.queue for node in plan.nodes} == {"uploads"}  # no step has limits
    assert plan.parent.job_id.startswith("finalize-")
