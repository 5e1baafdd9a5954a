"""The reconciler rebuilds lost flows as flows (offload.reconcile, repair 2): a lost step
comes back under its parent, a flow Redis lost altogether comes back as a flow without
re-running what completed. The reconciler Lambda runs in-process as its database role."""

from __future__ import annotations

import asyncio
import json

from offload.jobs import JobRef
from offload.pipelines import Pipeline, Step
from offload_local.stack import delete_keys
from tests.support.events import (
    age_rows,
    job_rows,
    queue_call,
    queue_jobs,
    queued_upload,
    sql,
    upload_row,
)
from tests.support.events import invoke_reconciler as reconcile
from tests.support.harness import job_events, producer, running_worker, wait_for

TWO_STEPS = Pipeline("test-two", (Step("noop"), Step("noop_too")))


def _started_flow(settings, s3, bucket) -> tuple[str, JobRef, dict[str, str]]:
    """A queued upload whose flow was started (nothing has run); its job ids by name."""
    key, ref = queued_upload(settings, s3, bucket)

    async def start() -> None:
        async with producer(settings) as made:
            await made.start_flow(TWO_STEPS, ref, {})

    asyncio.run(start())
    return key, ref, {row["name"]: row["id"] for row in job_rows(settings, ref.upload_id)}


def _runs(settings, job_id: str) -> int:
    return sum(1 for e in job_events(settings, job_id) if e["state"] == "active")


def _parent_key_of(settings, job_id: str) -> str | None:
    async def read(queue) -> str | None:
        job = await queue.getJob(job_id)
        return job.parentKey if job else None

    return queue_call(settings, read)


def test_a_lost_step_comes_back_under_its_parent(
    lambda_env, settings, pipeline_settings, s3, bucket
):
    key, _, ids = _started_flow(settings, s3, bucket)
    step_key = f"{settings.queue_prefix}:{settings.queue_name}:{ids['noop_too']}"

    async def lose(queue) -> None:  # the step's hash and its place in the queue, nothing else
        client = queue.client
        await client.delete(step_key)
        await client.zrem(queue.toKey("prioritized"), ids["noop_too"])
        await client.lrem(queue.toKey("wait"), 0, ids["noop_too"])

    queue_call(settings, lose)
    age_rows(settings, "jobs", settings.reconcile_after_s + 60)
    report = reconcile()
    assert (report["jobs_missing"], report["jobs_requeued"]) == (1, 1)
    parent_key = f"{settings.queue_prefix}:{settings.queue_name}:{ids['finalize']}"
    assert _parent_key_of(settings, ids["noop_too"]) == parent_key

    async def run() -> None:
        async with running_worker(pipeline_settings):
            await wait_for(lambda: upload_row(settings, key)["state"] == "processed", 30)

    asyncio.run(run())
    result = json.loads(
        s3.get_object(Bucket=bucket, Key=upload_row(settings, key)["result_key"])["Body"].read()
    )
    assert set(result["steps"]) == {"noop", "noop_too"}
    assert all(_runs(settings, job_id) == 1 for job_id in ids.values())


def test_a_flow_redis_lost_is_rebuilt_without_rerunning_a_completed_step(
    lambda_env, settings, pipeline_settings, s3, bucket, redis_admin_url
):
    key, _, ids = _started_flow(settings, s3, bucket)
    # The first step completed (its row says so) before Redis lost everything.
    sql(
        settings,
        "UPDATE jobs SET state = 'completed', attempt = 1, result = %s WHERE id = %s",
        json.dumps({"ok": True}),
        ids["noop"],
    )
    delete_keys(redis_admin_url, settings.queue_prefix)
    age_rows(settings, "jobs", settings.reconcile_after_s + 60)
    report = reconcile()
    # The first of finalize and the unfinished step found missing brings the whole flow back
    # (the completed step is not checked: it is not in flight).
    assert (report["jobs_missing"], report["jobs_requeued"]) == (1, 1)
    assert set(queue_jobs(settings)) == {ids["finalize"], ids["noop_too"]}
    assert _parent_key_of(settings, ids["noop_too"]).endswith(ids["finalize"])

    async def run() -> None:
        async with running_worker(pipeline_settings):
            await wait_for(lambda: upload_row(settings, key)["state"] == "processed", 30)

    asyncio.run(run())
    assert _runs(settings, ids["noop"]) == 0  # completed before the loss: never run again
    assert _runs(settings, ids["noop_too"]) == 1 and _runs(settings, ids["finalize"]) == 1
    result = json.loads(
        s3.get_object(Bucket=bucket, Key=upload_row(settings, key)["result_key"])["Body"].read()
    )
    assert result["steps"]["noop"]["result"] == {"ok": True}  # from its row
    assert set(result["steps"]) == {"noop", "noop_too"}
