"""Partial retries through the API: ``POST /jobs/{id}/retry`` of a pipeline step that failed
for good runs that step again and then the pipeline's ``finalize``, not the whole pipeline
(offload.flow_retry, JobService.retry). Real Redis, PostgreSQL, moto S3 and EventBridge; the
API handler runs in-process as the ``api`` database role."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

from offload.jobs import JobRef
from offload.pipelines import Pipeline, Step
from offload.upload_events import FAILED, PROCESSED
from tests.support.apigw import call
from tests.support.events import insert_upload, job_rows, queued_upload, sql, upload_row
from tests.support.harness import job_events, producer, running_worker, wait_for

# The second step fails for good on its first attempt and succeeds when retried.
REPAIRABLE = Pipeline("test-repairable", (Step("noop"), Step("fail_first_attempt_for_good")))
TWO_FAILING = Pipeline(
    "test-two-failing",
    (Step("fail_first_attempt_for_good"), Step("fail_permanently"), Step("noop")),
)
OWNER = "user-a"


def _failed_flow(settings, pipeline_settings, s3, bucket, pipeline: Pipeline) -> tuple[str, JobRef]:
    """A queued upload of OWNER whose flow ran until its upload failed."""
    key, ref = queued_upload(settings, s3, bucket, owner=OWNER)

    async def run() -> None:
        async with producer(settings) as made:
            await made.start_flow(pipeline, ref, {})
        async with running_worker(pipeline_settings):
            await wait_for(lambda: upload_row(settings, key)["state"] == "failed", 30)
            await wait_for(lambda: _rows(settings, ref)["finalize"]["state"] == "failed", 30)

    asyncio.run(run())
    return key, ref


def _rows(settings, ref: JobRef) -> dict[str, dict]:
    return {row["name"]: row for row in job_rows(settings, ref.upload_id)}


def _runs(settings, job_id: str) -> int:
    return sum(1 for e in job_events(settings, job_id) if e["state"] == "active")


def test_retrying_the_failed_step_reruns_it_then_finalize_and_the_upload_is_processed(
    lambda_env, settings, pipeline_settings, s3, bucket, bus
):
    key, ref = _failed_flow(settings, pipeline_settings, s3, bucket, REPAIRABLE)
    rows = _rows(settings, ref)
    failed_step = rows["fail_first_attempt_for_good"]
    assert upload_row(settings, key)["failed_step"] == "fail_first_attempt_for_good"

    # finalize failed because of its step: retrying it directly is refused, nothing moves.
    refused = call("POST", f"/jobs/{rows['finalize']['id']}/retry", sub=OWNER)
    assert refused.status == 409 and "retry that step" in refused.message
    assert _rows(settings, ref)["finalize"]["state"] == "failed"

    answer = call("POST", f"/jobs/{failed_step['id']}/retry", sub=OWNER)
    assert answer.status == 200, answer.body
    assert answer.body["state"] == "queued"
    upload = upload_row(settings, key)
    assert (upload["state"], upload["failed_step"], upload["error"]) == ("queued", None, None)
    assert _rows(settings, ref)["finalize"]["state"] == "queued"

    async def run() -> None:
        async with running_worker(pipeline_settings):
            await wait_for(lambda: upload_row(settings, key)["state"] == "processed", 30)

    asyncio.run(run())
    rows = _rows(settings, ref)
    assert {name: row["state"] for name, row in rows.items()} == {
        "noop": "completed",
        "fail_first_attempt_for_good": "completed",
        "finalize": "completed",
    }
    # Only the failed step ran again; finalize ran once, after it.
    assert _runs(settings, rows["noop"]["id"]) == 1
    assert _runs(settings, rows["fail_first_attempt_for_good"]["id"]) == 2
    assert _runs(settings, rows["finalize"]["id"]) == 1
    upload = upload_row(settings, key)
    result = json.loads(s3.get_object(Bucket=bucket, Key=upload["result_key"])["Body"].read())
    assert result["steps"]["fail_first_attempt_for_good"]["result"] == {"attempt": 2}
    assert result["steps"]["noop"]["result"] == {"ok": True}
    assert [event["detail-type"] for event in bus.events(2)] == [FAILED, PROCESSED]


def test_with_two_failed_steps_the_pipeline_waits_for_both_retries(
    lambda_env, settings, pipeline_settings, s3, bucket, bus
):
    key, ref = _failed_flow(settings, pipeline_settings, s3, bucket, TWO_FAILING)

    async def both_failed() -> None:  # the second failure lands after the parent failed
        await wait_for(lambda: _rows(settings, ref)["fail_permanently"]["state"] == "failed", 30)

    async def settle() -> None:
        async with running_worker(pipeline_settings):
            await both_failed()

    asyncio.run(settle())
    rows = _rows(settings, ref)
    answer = call("POST", f"/jobs/{rows['fail_first_attempt_for_good']['id']}/retry", sub=OWNER)
    assert answer.status == 200, answer.body

    async def run_first() -> None:
        async with running_worker(pipeline_settings):
            await wait_for(
                lambda: _rows(settings, ref)["fail_first_attempt_for_good"]["state"] == "completed",
                30,
            )

    asyncio.run(run_first())
    # The other step is still failed: the upload stays failed and finalize does not run.
    assert upload_row(settings, key)["state"] == "failed"
    assert _rows(settings, ref)["finalize"]["state"] == "failed"
    assert _runs(settings, _rows(settings, ref)["finalize"]["id"]) == 0


def test_a_finalize_that_failed_by_itself_is_retried_alone(
    lambda_env, settings, pipeline_settings, s3, bucket, bus
):
    """``finalize`` fails for good on its own (its bucket refuses result.json: here, there is
    no bucket yet); retrying it runs it again over its steps' results, which are not re-run."""
    missing = f"not-yet-{bucket}"
    key = insert_upload(settings, missing, size=5, owner=OWNER)
    sql(settings, "UPDATE uploads SET state = 'queued', etag = 'e1' WHERE key = %s", key)
    ref = JobRef(missing, key, etag="e1", owner=OWNER, upload_id=upload_row(settings, key)["id"])
    once = replace(settings, default_attempts=1)

    async def fail() -> None:
        async with producer(once) as made:
            await made.start_flow(Pipeline("test-noop", (Step("noop"),)), ref, {})
        async with running_worker(replace(pipeline_settings, default_attempts=1)):
            await wait_for(lambda: upload_row(settings, key)["state"] == "failed", 30)

    asyncio.run(fail())
    assert upload_row(settings, key)["failed_step"] == "finalize"
    s3.create_bucket(Bucket=missing)
    finalize = _rows(settings, ref)["finalize"]
    answer = call("POST", f"/jobs/{finalize['id']}/retry", sub=OWNER)
    assert answer.status == 200, answer.body
    assert upload_row(settings, key)["state"] == "queued"

    async def run() -> None:
        async with running_worker(pipeline_settings):
            await wait_for(lambda: upload_row(settings, key)["state"] == "processed", 30)

    asyncio.run(run())
    rows = _rows(settings, ref)
    assert _runs(settings, rows["noop"]["id"]) == 1
    assert _runs(settings, rows["finalize"]["id"]) == 2
    assert s3.get_object(Bucket=missing, Key=upload_row(settings, key)["result_key"])
