"""The scheduled Lambdas in-process: queue metrics (read back from moto CloudWatch) and the
reconciler (real Redis and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import boto3
import pytest
import redis
from bullmq import Worker

from lambdas import runtime
from offload.db.status import JobIdentity
from offload.jobs import INSPECT, THUMBNAIL, JobRef, job_id
from offload.pipelines import FINALIZE
from offload.queue import open_queue
from offload.reconcile import ref_for_job_row
from offload.redis_conn import connection_options
from tests.support.events import (
    FakeContext,
    age_rows,
    insert_upload,
    job_rows,
    queue_call,
    queue_jobs,
    sql,
    upload_row,
)
from tests.support.events import (
    invoke_reconciler as reconcile,
)
from tests.support.harness import producer, running_worker, wait_for, wait_for_state
from tests.support.redis_acl import as_environment, as_user
from tests.support.servers import unique_name

# --- queue metrics ----------------------------------------------------------------------------


@pytest.fixture
def metrics_settings(lambda_env, settings, moto_endpoint, monkeypatch):
    """Settings with a namespace and a queue name of this test's own (moto's get_metric_data
    ignores the namespace when dimensions are given, so the Queue dimension must differ too)."""
    settings = replace(
        settings,
        metrics_namespace=unique_name("OffloadTest"),
        queue_name=unique_name("queue"),
    )
    monkeypatch.setenv("OFFLOAD_METRICS_NAMESPACE", settings.metrics_namespace)
    monkeypatch.setenv("OFFLOAD_QUEUE_NAME", settings.queue_name)
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDWATCH", moto_endpoint)
    runtime.reset()
    yield settings
    from lambdas import queue_metrics

    queue_metrics.close()


def _published(moto_endpoint: str, settings) -> dict[str, list[float]]:
    cloudwatch = boto3.client("cloudwatch", endpoint_url=moto_endpoint, region_name="us-east-1")
    names = ["Waiting", "Active", "Delayed", "Failed", "OldestWaitingAge"]
    now = datetime.now(UTC)
    response = cloudwatch.get_metric_data(
        MetricDataQueries=[
            {
                "Id": f"m{i}",
                "Label": name,
                "MetricStat": {
                    "Metric": {
                        "Namespace": settings.metrics_namespace,
                        "MetricName": name,
                        "Dimensions": [{"Name": "Queue", "Value": settings.queue_name}],
                    },
                    "Period": 60,
                    "Stat": "Maximum",
                },
            }
            for i, name in enumerate(names)
        ],
        StartTime=now - timedelta(minutes=5),
        EndTime=now + timedelta(minutes=5),
    )
    return {result["Label"]: result["Values"] for result in response["MetricDataResults"]}


def test_queue_metrics_are_published_to_cloudwatch(metrics_settings, moto_endpoint):
    from lambdas import queue_metrics

    settings = metrics_settings

    async def scenario():
        queue = open_queue(settings)
        release = asyncio.Event()

        async def process(job, token):
            if job.name == "boom":
                raise ValueError("boom")
            await release.wait()

        worker = Worker(
            settings.queue_name,
            process,
            {
                "connection": connection_options(as_user(settings, "worker").redis_url),
                "prefix": settings.queue_prefix,
                "concurrency": 1,
            },
        )
        counts = queue.getJobCounts
        try:
            await queue.add("boom", {}, {"attempts": 1})
            await wait_for(lambda: _count(counts("failed"), "failed", 1))
            await queue.add("block", {})
            await wait_for(lambda: _count(counts("active"), "active", 1))
            two_minutes_ago = int(time.time() * 1000) - 120_000
            await queue.add("waits", {}, {"timestamp": two_minutes_ago})  # head of the list
            await queue.add("waits", {})
            await queue.add("waits", {}, {"priority": 3})  # prioritized: waiting too
            await queue.add("later", {}, {"delay": 600_000})
            return await asyncio.to_thread(queue_metrics.handler, {}, FakeContext())
        finally:
            release.set()
            await worker.close()
            await queue.close()

    result = asyncio.run(scenario())
    assert (result["waiting"], result["active"], result["delayed"], result["failed"]) == (
        3,
        1,
        1,
        1,
    )
    assert 120 <= result["oldest_waiting_age_s"] < 150

    published = _published(moto_endpoint, settings)
    assert published["Waiting"] == [3.0]
    assert published["Active"] == [1.0]
    assert published["Delayed"] == [1.0]
    assert published["Failed"] == [1.0]
    (age,) = published["OldestWaitingAge"]
    assert 120 <= age < 150


async def _count(pending, state: str, expected: int) -> bool:
    return (await pending)[state] == expected


def test_an_empty_queue_publishes_zeros(metrics_settings, moto_endpoint):
    from lambdas import queue_metrics

    result = queue_metrics.handler({}, FakeContext())
    assert result["waiting"] == result["oldest_waiting_age_s"] == 0
    published = _published(moto_endpoint, metrics_settings)
    assert published["Waiting"] == [0.0] and published["OldestWaitingAge"] == [0.0]


def test_queue_metrics_fail_loudly_when_redis_is_down(metrics_settings, moto_endpoint, monkeypatch):
    """No datapoint rather than zeros: zeros would scale the workers in during an outage."""
    from lambdas import queue_metrics

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    runtime.reset()
    with pytest.raises(redis.exceptions.ConnectionError):  # fails fast, not at the timeout
        queue_metrics.handler({}, FakeContext(timeout_s=3.5))
    queue_metrics.close()
    assert _published(moto_endpoint, metrics_settings)["Waiting"] == []


def test_waiting_since_counts_from_the_last_attempt_of_a_retried_job():
    from lambdas.queue_metrics import waiting_since_ms

    assert waiting_since_ms(SimpleNamespace(timestamp=1_000, delay=0, processedOn=None)) == 1_000
    assert waiting_since_ms(SimpleNamespace(timestamp=1_000, delay=500, processedOn=None)) == 1_500
    assert waiting_since_ms(SimpleNamespace(timestamp=1_000, delay=0, processedOn=9_000)) == 9_000


# --- reconciler -------------------------------------------------------------------------------


ORPHAN_ETAG = "d41d8cd98f00b204e9800998ecf8427e"


def _uploaded(settings, bucket: str, s3=None, body: bytes = b"hello", **kwargs) -> dict:
    """An upload the enqueue Lambda marked uploaded but never got to queue; with ``s3``, its
    object is there too (the reconciler sniffs it for its pipeline)."""
    key = insert_upload(settings, bucket, **kwargs)
    etag = "0123456789abcdef0123456789abcdef"
    if s3 is not None:
        etag = s3.put_object(Bucket=bucket, Key=key, Body=body)["ETag"].strip('"')
    sql(
        settings,
        "UPDATE uploads SET state = 'uploaded', size_actual = size_announced, etag = %s"
        " WHERE key = %s",
        etag,
        key,
    )
    return upload_row(settings, key)


def _enqueue(settings, name: str, ref: JobRef, opts: dict | None = None) -> str:
    async def go() -> str:
        async with producer(settings) as prod:
            return await prod.enqueue(name, ref, opts)

    return asyncio.run(go())


def _lose(settings, *job_ids: str) -> None:
    """Remove jobs from Redis, as a failover that lost the newest writes would."""

    async def remove(queue) -> None:
        for jid in job_ids:
            await queue.remove(jid)

    queue_call(as_environment(settings), remove)
    assert not set(job_ids) & set(queue_jobs(settings))


def _events(settings, jid: str) -> list[dict]:
    return sql(settings, "SELECT state, attempt, message FROM job_events WHERE job_id = %s", jid)


def test_uploads_in_s3_without_jobs_are_enqueued_once(lambda_env, settings, s3, bucket):
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 24
    image = _uploaded(settings, bucket, s3, png, filename="a.png", size=len(png))
    pdf = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"
    document = _uploaded(settings, bucket, s3, pdf, filename="b.pdf", size=len(pdf))
    queued = _uploaded(settings, bucket, s3)  # queued, but its job rows are gone
    sql(settings, "UPDATE uploads SET state = 'queued' WHERE id = %s", queued["id"])
    fresh = _uploaded(settings, bucket)  # too recent: the enqueue Lambda may still be on it
    pending = insert_upload(settings, bucket)  # never arrived: nothing to do
    age_rows(settings, "uploads", settings.reconcile_after_s + 60, f"id <> '{fresh['id']}'")

    report = reconcile()
    counts = [report[name] for name in ("uploads_checked", "uploads_requeued", "jobs_enqueued")]
    assert counts == [3, 3, 7]  # three flows: finalize with 2, 1 and 1 steps
    assert upload_row(settings, image["key"])["state"] == "queued"
    assert upload_row(settings, document["key"])["state"] == "queued"
    # each pipeline picked by the type sniffed from the object (one ranged GET each)
    assert upload_row(settings, image["key"])["detected_type"] == "image/png"
    assert upload_row(settings, document["key"])["detected_type"] == "application/pdf"
    assert upload_row(settings, fresh["key"])["state"] == "uploaded"
    assert upload_row(settings, pending)["state"] == "pending"
    rows = job_rows(settings)
    assert sorted((r["upload_id"], r["name"]) for r in rows) == sorted(
        [
            (image["id"], FINALIZE),
            (image["id"], INSPECT),
            (image["id"], THUMBNAIL),
            (document["id"], FINALIZE),
            (document["id"], INSPECT),
            (queued["id"], FINALIZE),
            (queued["id"], INSPECT),
        ]
    )
    jobs = queue_jobs(settings)
    assert set(jobs) == {r["id"] for r in rows}
    # the same ids the enqueue Lambda derives from the object (bucket, key, ETag)
    ref = JobRef(bucket, document["key"], etag=document["etag"])
    assert job_id(INSPECT, ref) in jobs

    again = reconcile()
    assert again["uploads_checked"] == again["jobs_enqueued"] == again["jobs_requeued"] == 0
    assert set(queue_jobs(settings)) == set(jobs)


def test_a_lost_active_job_is_requeued_and_then_runs(lambda_env, settings, bucket):
    lost = _enqueue(settings, "noop", JobRef("test-bucket", "lost"))
    healthy = _enqueue(settings, "noop", JobRef("test-bucket", "healthy"))
    sql(settings, "UPDATE jobs SET state = 'active', attempt = 3, worker_id = 'w-gone'")
    _lose(settings, lost)
    age_rows(settings, "jobs", settings.reconcile_after_s + 60)

    report = reconcile()
    assert (report["jobs_checked"], report["jobs_missing"], report["jobs_requeued"]) == (2, 1, 1)
    rows = {r["id"]: r for r in job_rows(settings)}
    assert (rows[lost]["state"], rows[lost]["attempt"], rows[lost]["worker_id"]) == (
        "queued",
        0,
        None,
    )
    assert rows[healthy]["state"] == "active" and rows[healthy]["attempt"] == 3  # untouched
    last = _events(settings, lost)[-1]
    assert last["state"] == "queued" and "missing from the queue (was active)" in last["message"]
    assert len(_events(settings, healthy)) == 1
    assert set(queue_jobs(settings)) == {lost, healthy}

    again = reconcile()  # idempotent: the job is back in the queue
    assert again["jobs_missing"] == again["jobs_requeued"] == 0
    assert len(_events(settings, lost)) == 2

    async def run_it():
        async with running_worker(settings):
            return await wait_for_state(settings, lost, "completed")

    # attempt reset to 0: the new run's status writes (attempt 1) are accepted
    assert asyncio.run(run_it())["attempt"] == 1


def test_queued_and_retrying_rows_missing_from_redis_are_requeued_with_their_reference(
    lambda_env, settings, bucket
):
    upload = _uploaded(settings, bucket, filename="a.png", content_type="image/png")
    version = "3HL4kqtJlcpXroDTDmJ+rmSpXd3d"  # a versioned bucket's event: version id + ETag
    sql(settings, "UPDATE uploads SET version_id = %s, etag = 'x'", version)
    versioned = JobRef(
        bucket, upload["key"], version, "x", owner=upload["owner"], upload_id=upload["id"]
    )
    first = _enqueue(settings, INSPECT, versioned)
    orphan = _enqueue(settings, "noop", JobRef("b", "k", etag=f'"{ORPHAN_ETAG}"'))
    sql(settings, "UPDATE jobs SET state = 'retrying', attempt = 1 WHERE id = %s", orphan)
    _lose(settings, first, orphan)
    age_rows(settings, "jobs", settings.reconcile_after_s + 60)

    assert reconcile()["jobs_requeued"] == 2
    jobs = queue_jobs(settings)
    assert JobRef.from_data(jobs[first].data) == versioned
    assert jobs[orphan].data == {"bucket": "b", "key": "k", "etag": ORPHAN_ETAG}


def test_in_flight_rows_are_checked_page_by_page_from_a_cursor(
    lambda_env, settings, bucket, monkeypatch
):
    """More in-flight rows than the per-run limit: the healthy ones first in id order must not
    hide the lost one behind them."""
    monkeypatch.setenv("OFFLOAD_RECONCILE_LIMIT", "2")
    ids = sorted(_enqueue(settings, "noop", JobRef("b", f"k{i}")) for i in range(5))
    _lose(settings, ids[-1])
    age_rows(settings, "jobs", settings.reconcile_after_s + 60)

    reports = [reconcile() for _ in range(3)]
    assert [r["jobs_checked"] for r in reports] == [2, 2, 1]
    assert [r["jobs_requeued"] for r in reports] == [0, 0, 1]
    assert [r["cursor_wrapped"] for r in reports] == [False, False, True]
    assert set(queue_jobs(settings)) == set(ids)
    assert reconcile()["jobs_checked"] == 2  # wrapped: from the start again


def test_reconciler_repairs_what_the_enqueue_lambda_left_during_a_redis_outage(
    lambda_env, settings, s3, bucket, monkeypatch
):
    from lambdas import enqueue
    from tests.support.events import s3_body, s3_record, sqs_event, sqs_record

    key = insert_upload(settings, bucket, size=5)
    etag = s3.put_object(Bucket=bucket, Key=key, Body=b"hello")["ETag"].strip('"')
    good_redis = settings.redis_url
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("OFFLOAD_ENQUEUE_RECORD_TIMEOUT_S", "1")
    runtime.reset()
    event = sqs_event([sqs_record(s3_body(s3_record(bucket, key, 5, etag)), "m")])
    assert enqueue.handler(event, FakeContext())["batchItemFailures"] == [{"itemIdentifier": "m"}]
    # ... the message then ends in the DLQ; Redis comes back
    monkeypatch.setenv("REDIS_URL", good_redis)
    runtime.reset()
    age_rows(settings, "uploads", settings.reconcile_after_s + 60)
    age_rows(settings, "jobs", settings.reconcile_after_s + 60)

    report = reconcile()
    # the flow's rows were written before Redis was tried: the flow is added as a tree
    assert report["uploads_requeued"] == 1 and report["jobs_requeued"] == 0
    assert upload_row(settings, key)["state"] == "queued"
    assert set(queue_jobs(settings)) == {row["id"] for row in job_rows(settings)}


def test_a_job_row_is_rebuilt_into_the_reference_that_gives_its_id():
    def row(name: str, ref: JobRef, **upload) -> dict:
        return {
            "id": job_id(name, ref),
            "name": name,
            "bucket": ref.bucket,
            "key": ref.key,
            "owner": ref.owner,
            "upload_id": ref.upload_id,
            "revision": ref.revision or None,
            "upload_version_id": upload.get("version_id"),
            "upload_etag": upload.get("etag"),
        }

    etag_only = JobRef("b", "k", etag="0123456789abcdef0123456789abcdef-12")
    version_only = JobRef("b", "k", version_id="v.1_abc")
    bare = JobRef("b", "k")
    for ref in (etag_only, version_only, bare):
        assert ref_for_job_row(row("noop", ref)) == ref
    both = JobRef("b", "k", version_id="v2", etag="e", owner="o", upload_id="u")
    assert ref_for_job_row(row(INSPECT, both, version_id="v2", etag="e")) == both
    broken = row("noop", etag_only) | {"key": "another"}
    assert ref_for_job_row(broken) is None


def _finish_outside_our_worker(settings, outcomes: dict[str, str]) -> None:
    """Run jobs to the end with a bare bullmq worker, which writes no status (as a Node worker
    or a job moved by hand would): ``outcomes`` maps a job id to "completed" or "failed"."""

    async def run(queue) -> None:
        async def process(job, token):
            if outcomes[job.id] == "failed":
                raise ValueError(f"failed outside: {job.id}")
            if outcomes[job.id] == "failed naming the bucket":
                raise ValueError(
                    f"denied: arn:aws:s3:::{job.data['bucket']}/x, s3://{job.data['bucket']}/x"
                )
            return {"done": job.id}

        worker = Worker(
            settings.queue_name,
            process,
            {
                "connection": connection_options(as_user(settings, "worker").redis_url),
                "prefix": settings.queue_prefix,
            },
        )
        try:
            for jid, outcome in outcomes.items():
                state = outcome.split()[0]
                await wait_for(lambda jid=jid, state=state: _in_state(queue, jid, state))
        finally:
            await worker.close()

    queue_call(settings, run)


async def _in_state(queue, jid: str, state: str) -> bool:
    return await queue.getJobState(jid) == state


def test_in_flight_rows_whose_queue_job_is_final_are_settled(lambda_env, settings, bucket):
    """A job that ended without our worker writing it (an older worker, Node BullMQ, a move by
    hand) left its row in flight forever: the row follows the queue's final state."""
    done = _enqueue(settings, "noop", JobRef("b", "done"))
    broken = _enqueue(settings, "noop", JobRef("b", "broken", etag="e" * 32), {"attempts": 1})
    waiting = _enqueue(settings, "noop", JobRef("b", "waiting"))
    _finish_outside_our_worker(settings, {done: "completed", broken: "failed"})
    sql(settings, "UPDATE jobs SET state = 'active', attempt = 1 WHERE id <> %s", waiting)
    age_rows(settings, "jobs", settings.reconcile_after_s + 60)

    report = reconcile()
    assert (report["jobs_checked"], report["jobs_settled"], report["jobs_requeued"]) == (3, 2, 0)
    rows = {r["id"]: r for r in job_rows(settings)}
    assert (rows[done]["state"], rows[done]["result"]) == ("completed", {"done": done})
    assert rows[done]["finished_at"] is not None
    assert rows[broken]["state"] == "failed"
    assert rows[broken]["error_message"] == f"failed outside: {broken}"
    assert "ValueError" in rows[broken]["error_stack"]
    assert rows[waiting]["state"] == "queued"  # the queue has it waiting: nothing to settle
    last = _events(settings, done)[-1]
    assert last["state"] == "completed" and "settled by the reconciler" in last["message"]
    assert reconcile()["jobs_settled"] == 0  # settled rows are final: not checked again


def test_a_settled_failure_shows_its_user_no_internal_name(lambda_env, settings, bucket):
    """The queue's failed reason was written by someone else (Node BullMQ, an older worker):
    the row's error, shown to the job's user, is redacted; the whole text goes to the stack."""
    broken = _enqueue(settings, "noop", JobRef(bucket, "k", etag="e" * 32), {"attempts": 1})
    _finish_outside_our_worker(settings, {broken: "failed naming the bucket"})
    sql(settings, "UPDATE jobs SET state = 'active', attempt = 1 WHERE id = %s", broken)
    age_rows(settings, "jobs", settings.reconcile_after_s + 60)

    assert reconcile()["jobs_settled"] == 1
    row = job_rows(settings)[0]
    assert row["state"] == "failed"
    assert row["error_message"] == "denied: [hidden], [hidden]"
    assert f"arn:aws:s3:::{bucket}/x" in row["error_stack"]


def _started_by_our_worker(settings, jid: str, name: str, ref: JobRef) -> None:
    """The row our worker writes when it starts attempt 1 of job ``jid`` (then dies)."""
    from tests.support.harness import status_store

    async def start() -> None:
        async with status_store(settings) as store:
            identity = JobIdentity(jid, name, settings.queue_name, ref)
            assert await store.mark_active(identity, 1, 3, "w-gone")

    asyncio.run(start())


def _emf_metric(stdout: str, name: str) -> list[float]:
    """The values of metric ``name`` in the EMF documents printed during the run."""
    values = []
    for line in stdout.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            document = json.loads(line)
            value = document.get(name, [])
            values.extend(value if isinstance(value, list) else [value])
    return values


def test_a_lost_job_whose_row_cannot_be_rebuilt_is_counted_logged_and_left_alone(
    lambda_env, settings, bucket, caplog, capsys
):
    """A job added under an id of its own (Node BullMQ, Bull Board's "add job") that our worker
    started, then lost from Redis: no reference rebuilds that id, so adding it again would make
    a different job. The row is reported, and left for an operator, run after run."""
    custom = f"outside-{unique_name('job')}"
    ref = JobRef("test-bucket", "custom/id.bin")
    queue_call(settings, lambda queue: queue.add("noop", ref.to_data(), {"jobId": custom}))
    _started_by_our_worker(settings, custom, "noop", ref)
    rebuildable = _enqueue(settings, "noop", JobRef("test-bucket", "derived/id.bin"))
    _lose(settings, custom, rebuildable)
    age_rows(settings, "jobs", settings.reconcile_after_s + 60)
    row_before = {r["id"]: r for r in job_rows(settings)}[custom]
    events_before = _events(settings, custom)
    capsys.readouterr()  # what came before the runs

    # offload.* loggers write through the Lambda's Powertools handler (set up when its module
    # is imported) and do not propagate
    from lambdas import reconciler  # noqa: F401

    offload_logs = logging.getLogger("offload")
    offload_logs.addHandler(caplog.handler)
    try:
        reports = [reconcile(), reconcile()]
    finally:
        offload_logs.removeHandler(caplog.handler)

    first = reports[0]
    assert (first["jobs_checked"], first["jobs_missing"]) == (2, 2)
    assert (first["jobs_requeued"], first["jobs_unrecoverable"]) == (1, 1)
    assert reports[1]["jobs_unrecoverable"] == 1  # still there, still reported, still untouched
    assert {r["id"]: r for r in job_rows(settings)}[custom] == row_before
    assert row_before["state"] == "active" and row_before["attempt"] == 1
    assert _events(settings, custom) == events_before
    assert set(queue_jobs(settings)) == {rebuildable}  # nothing added under a wrong id
    logged = [
        record
        for record in caplog.records
        if record.getMessage() == "lost job cannot be rebuilt from its row; left as is"
    ]
    assert [getattr(record, "job_id", None) for record in logged] == [custom, custom]
    assert _emf_metric(capsys.readouterr().out, "JobsUnrecoverable") == [1.0, 1.0]


def _pending_with_object(settings, s3, bucket: str, body: bytes | None) -> str:
    """A pending upload created long ago; with ``body``, its object is in S3 (its S3 event
    never reached the enqueue Lambda: dead-lettered, or never sent)."""
    key = insert_upload(settings, bucket, size=5)
    sql(settings, "UPDATE uploads SET created_at = now() - interval '1 day' WHERE key = %s", key)
    if body is not None:
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    return key


def test_an_uploaded_object_whose_event_was_lost_is_processed(
    lambda_env, settings, s3, bucket, monkeypatch
):
    """An outage longer than the event queue's redeliveries sends S3 events to the DLQ; their
    uploads stayed pending for good. The reconciler looks for their objects."""
    monkeypatch.setenv("OFFLOAD_RECONCILE_AFTER_S", "1")
    runtime.reset()
    lost = _pending_with_object(settings, s3, bucket, b"hello")
    never_sent = _pending_with_object(settings, s3, bucket, None)
    head = s3.head_object(Bucket=bucket, Key=lost)
    time.sleep(max(0.0, 1.2 - (datetime.now(UTC) - head["LastModified"]).total_seconds()))

    report = reconcile()
    assert (report["pending_checked"], report["uploads_found"]) == (2, 1)
    found = upload_row(settings, lost)
    assert (found["state"], found["size_actual"]) == ("queued", 5)
    parent, job = job_rows(settings, found["id"])  # by name
    assert (parent["name"], job["name"], job["parent_id"]) == (FINALIZE, INSPECT, parent["id"])
    assert set(queue_jobs(settings)) == {parent["id"], job["id"]}
    assert upload_row(settings, never_sent)["state"] == "pending"  # nothing to process yet

    again = reconcile()  # the found upload is queued now: only the other one is looked at
    assert (again["pending_checked"], again["uploads_found"]) == (1, 0)
    assert set(queue_jobs(settings)) == {parent["id"], job["id"]}


def test_an_object_whose_event_may_still_come_is_left_to_it(lambda_env, settings, s3, bucket):
    """Leave the normal path alone: an object newer than OFFLOAD_RECONCILE_AFTER_S (600 s
    here) may have its event in the queue right now."""
    key = _pending_with_object(settings, s3, bucket, b"hello")
    report = reconcile()
    assert (report["pending_checked"], report["uploads_found"]) == (1, 0)
    assert upload_row(settings, key)["state"] == "pending" and job_rows(settings) == []
