"""A single upload's key written again while its presigned POST is valid: the newest version is
the one processed and shown.

The POST policy pins the key and the size, and the URL stays valid for ``url_expiry_s``: a
client can POST other bytes of the same size again, and S3 does not honour ``If-None-Match`` on
POST. The bucket is versioned (as the stacks and the local stack create it), so each write is a
version of its own. End to end: the API Lambda hands out the POST, the bytes go over HTTP to the
moto server, the events go through the enqueue Lambda (moto's own, which carry no version id,
or records in AWS's format with the version ids real S3 sends), a real worker runs the jobs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, replace
from typing import Any

import pytest
import requests

from offload.keys import UploadKey
from offload.pipelines import FINALIZE
from offload.s3events import SUPERSEDED
from tests.support.apigw import call
from tests.support.events import (
    age_rows,
    from_sqs_messages,
    insert_upload,
    invoke_enqueue,
    invoke_reconciler,
    queue_jobs,
    receive_all,
    s3_body,
    s3_record,
    sqs_event,
    sqs_record,
    step_rows,
    upload_row,
    wire_notifications,
)
from tests.support.harness import job_row, running_worker, wait_for_state

SIZE = 5
FIRST, SECOND = b"hello", b"HELLO"


@pytest.fixture
def versioned(s3, bucket: str, lambda_env) -> str:
    """The upload bucket (the API's, lambda_env) with versioning on, as deployed."""
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return bucket


@pytest.fixture
def events(s3, sqs, versioned: str) -> str:
    return wire_notifications(s3, sqs, versioned)


@pytest.fixture
def worker_settings(settings, moto_endpoint: str):
    return replace(settings, s3_endpoint_url=moto_endpoint)


@dataclass(frozen=True)
class Version:
    """One write of the upload's key, as S3 recorded it."""

    bucket: str
    key: str
    size: int
    version_id: str
    etag: str

    def aws_message(self) -> dict[str, Any]:
        """The SQS message of its event as S3 sends it for a versioned bucket."""
        record = s3_record(
            self.bucket,
            self.key,
            self.size,
            self.etag,
            event_name="ObjectCreated:Post",
            version_id=self.version_id,
        )
        return sqs_record(s3_body(record))


def create_single() -> dict[str, Any]:
    body = {"filename": "notes.txt", "size": SIZE, "contentType": "text/plain"}
    created = call("POST", "/uploads", body=body)
    assert created.status == 201 and created.body["type"] == "single", created.body
    return created.body


def _version(s3, bucket: str, key: str) -> Version:
    head = s3.head_object(Bucket=bucket, Key=key)
    return Version(bucket, key, head["ContentLength"], head["VersionId"], head["ETag"].strip('"'))


def post(s3, bucket: str, view: dict[str, Any], body: bytes) -> Version:
    """``body`` sent with the upload's presigned POST, as often as the URL is valid."""
    form = view["post"]
    response = requests.post(
        form["url"],
        data=form["fields"],
        files={"file": ("notes.txt", body, "text/plain")},
        timeout=30,
    )
    assert response.status_code in (200, 201, 204), response.text
    return _version(s3, bucket, view["key"])


def put(s3, bucket: str, key: str, body: bytes) -> Version:
    """moto does not enforce a POST policy (S3 does: its content-length-range pins the size),
    so objects of another size are written with PutObject."""
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    return _version(s3, bucket, key)


def moto_events(sqs, url: str, count: int) -> dict[str, dict[str, Any]]:
    """The next ``count`` object events moto sent (not its TestEvent), by their object's ETag."""
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 30
    while len(found) < count:
        for message in receive_all(sqs, url):
            for record in json.loads(message["Body"]).get("Records", []):
                found[record["s3"]["object"]["eTag"]] = message
        if time.monotonic() > deadline:
            raise TimeoutError(f"expected {count} object events, got {len(found)}")
    return found


def messages(form: str, sqs, url: str, *versions: Version) -> list[dict[str, Any]]:
    """Each version's event as an SQS record: moto's (no version id) or AWS's."""
    if form == "aws":
        moto_events(sqs, url, len(versions))  # drained, unused
        return [version.aws_message() for version in versions]
    by_etag = moto_events(sqs, url, len(versions))
    return [from_sqs_messages([by_etag[version.etag]])["Records"][0] for version in versions]


def deliver(*records: dict[str, Any]) -> None:
    """Each record in an invocation of its own, in this order; every one acknowledged."""
    for record in records:
        assert invoke_enqueue(sqs_event([record])) == {"batchItemFailures": []}


def job_ids(settings, upload_id: str) -> set[str]:
    """The upload's step jobs (every version's), without their flows' finalize parents."""
    return {row["id"] for row in step_rows(settings, upload_id)}


def parent_of(settings, job_id: str) -> str:
    """The finalize job of the step ``job_id``'s flow."""
    row = job_row(settings, job_id)
    assert row is not None and row["parent_id"], job_id
    return str(row["parent_id"])


def steps_listed(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {job["id"]: job for job in body["jobs"] if job["name"] != FINALIZE}


def run_until(settings, states: dict[str, str]) -> None:
    """A real worker runs until each job's status row is in its state."""

    async def go() -> None:
        async with running_worker(settings):
            for jid, state in states.items():
                await wait_for_state(settings, jid, state, timeout_s=90)

    asyncio.run(go())


def manifest(s3, bucket: str, view: dict[str, Any]) -> dict[str, Any]:
    key = UploadKey.parse(view["key"]).output_key("manifest.json")
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_second_post_of_the_same_size_is_processed_as_the_new_version(
    settings, worker_settings, s3, sqs, versioned, events
):
    view = create_single()
    first = post(s3, versioned, view, FIRST)
    (first_message,) = messages("moto", sqs, events, first)
    deliver(first_message)
    upload_id = upload_row(settings, view["key"])["id"]
    (first_job,) = job_ids(settings, upload_id)
    run_until(
        worker_settings, {first_job: "completed", parent_of(settings, first_job): "completed"}
    )
    assert upload_row(settings, view["key"])["state"] == "processed"

    # While the URL is valid: other bytes, the same size, the same key.
    second = post(s3, versioned, view, SECOND)
    assert second.version_id != first.version_id
    (second_message,) = messages("moto", sqs, events, second)
    deliver(second_message)

    row = upload_row(settings, view["key"])
    assert (row["state"], row["version_id"], row["etag"]) == (
        "queued",
        second.version_id,  # moto's event has none: it comes from the HEAD of the key
        second.etag,
    )
    (second_job,) = job_ids(settings, upload_id) - {first_job}
    assert job_row(settings, second_job)["revision"] == second.version_id
    assert set(queue_jobs(settings)) >= {second_job}
    second_parent = parent_of(settings, second_job)
    run_until(worker_settings, {second_job: "completed", second_parent: "completed"})
    newest = manifest(s3, versioned, view)
    assert (newest["sha256"], newest["version_id"]) == (sha256(SECOND), second.version_id)

    # The API shows the newest version's results, and marks the older version's job.
    listed = steps_listed(call("GET", "/jobs").body)
    assert set(listed) == {first_job, second_job}
    assert listed[second_job]["superseded"] is False
    assert listed[second_job]["result"]["sha256"] == sha256(SECOND)
    assert [link["name"] for link in listed[second_job]["links"]] == ["manifest.json"]
    assert listed[first_job]["superseded"] is True and listed[first_job]["links"] == []

    # Late duplicates of either event change nothing.
    deliver(first_message, second_message)
    assert job_ids(settings, upload_id) == {first_job, second_job}
    again = upload_row(settings, view["key"])
    assert (again["state"], again["version_id"]) == ("processed", second.version_id)
    assert again["result_key"] == UploadKey.parse(view["key"]).output_key("result.json")


@pytest.mark.parametrize("form", ["moto", "aws"])
def test_events_out_of_order_and_repeated_leave_the_newest_version(
    settings, s3, sqs, versioned, events, form, caplog
):
    view = create_single()
    older = post(s3, versioned, view, FIRST)
    newer = post(s3, versioned, view, SECOND)
    old_message, new_message = messages(form, sqs, events, older, newer)
    caplog.clear()

    deliver(new_message, old_message, new_message, old_message)

    row = upload_row(settings, view["key"])
    assert (row["state"], row["etag"]) == ("queued", newer.etag)
    (job,) = step_rows(settings, row["id"])
    if form == "aws":
        assert row["version_id"] == job["revision"] == newer.version_id
    else:  # moto's first event of a pending upload is taken as it comes (no HEAD)
        assert row["version_id"] is None and job["revision"] == newer.etag
    assert set(queue_jobs(settings)) == {job["id"], job["parent_id"]}
    ignored = [r.reason for r in caplog.records if r.getMessage() == "event ignored"]
    assert ignored == [SUPERSEDED, SUPERSEDED]


@pytest.mark.parametrize("form", ["aws", "moto"])
def test_a_newer_version_waits_until_the_older_versions_jobs_are_done(
    settings, worker_settings, s3, sqs, versioned, events, form
):
    """Every version's jobs write the upload's outputs to the same keys: the newest version's
    are enqueued once the older version's are finished, so they are written last."""
    view = create_single()
    older = post(s3, versioned, view, FIRST)
    newer = post(s3, versioned, view, SECOND)
    old_message, new_message = messages(form, sqs, events, older, newer)
    deliver(old_message)  # a pending upload's first object: accepted without a HEAD
    upload_id = upload_row(settings, view["key"])["id"]
    (old_job,) = job_ids(settings, upload_id)

    deliver(new_message)
    row = upload_row(settings, view["key"])
    assert (row["state"], row["version_id"], row["etag"]) == (
        "uploaded",
        newer.version_id,
        newer.etag,
    )
    assert job_ids(settings, upload_id) == {old_job}
    age_rows(settings, "uploads", settings.reconcile_after_s + 60)
    report = invoke_reconciler()  # the reconciler waits for them too
    assert (report["uploads_deferred"], report["jobs_enqueued"]) == (1, 0)

    # With a version id the older job reads its own version; with only an ETag (moto's event),
    # the key no longer matches it and the job fails for good.
    outcome = "completed" if form == "aws" else "failed"
    run_until(worker_settings, {old_job: outcome, parent_of(settings, old_job): outcome})
    # the older flow ended, but the upload names the newer object: it is not ended by it
    assert upload_row(settings, view["key"])["state"] == "uploaded"
    if form == "moto":
        assert "replaced" in job_row(settings, old_job)["error_message"]
        retry = call("POST", f"/jobs/{old_job}/retry")
        assert retry.status == 409 and "older version" in retry.message
    else:
        assert manifest(s3, versioned, view)["sha256"] == sha256(FIRST)

    report = invoke_reconciler()
    assert (report["uploads_requeued"], report["jobs_enqueued"]) == (1, 2)  # finalize, inspect
    assert upload_row(settings, view["key"])["state"] == "queued"
    (new_job,) = job_ids(settings, upload_id) - {old_job}
    assert job_row(settings, new_job)["revision"] == newer.version_id
    run_until(worker_settings, {new_job: "completed", parent_of(settings, new_job): "completed"})
    assert manifest(s3, versioned, view)["sha256"] == sha256(SECOND)
    assert upload_row(settings, view["key"])["state"] == "processed"
    assert call("GET", f"/jobs/{old_job}").body["superseded"] is True
    assert call("GET", f"/jobs/{new_job}").body["superseded"] is False


def test_a_newer_version_of_the_wrong_size_rejects_the_upload(
    settings, s3, sqs, versioned, events, caplog
):
    view = create_single()
    key = view["key"]
    first = post(s3, versioned, view, FIRST)
    deliver(*messages("moto", sqs, events, first))
    upload_id = upload_row(settings, key)["id"]
    (first_job,) = job_ids(settings, upload_id)

    # A wrong-size version already replaced by a right-size one: never judged (not current).
    too_long = put(s3, versioned, key, b"hello!")
    right = put(s3, versioned, key, SECOND)
    caplog.clear()
    deliver(*messages("moto", sqs, events, too_long, right))
    (ignored,) = [r for r in caplog.records if r.getMessage() == "event ignored"]
    assert (ignored.reason, ignored.etag) == (SUPERSEDED, too_long.etag)
    row = upload_row(settings, key)
    assert (row["state"], row["version_id"], row["error"]) == ("uploaded", right.version_id, None)

    # The newest version has the wrong size: the upload is rejected, naming that object.
    wrong = put(s3, versioned, key, b"HELLO!!")
    deliver(*messages("moto", sqs, events, wrong))
    row = upload_row(settings, key)
    assert (row["state"], row["size_actual"], row["version_id"], row["etag"]) == (
        "rejected",
        7,
        wrong.version_id,
        wrong.etag,
    )
    assert row["error"] == "object is 7 bytes, 5 were announced"
    assert job_ids(settings, upload_id) == {first_job}
    listed = call("GET", f"/jobs/{first_job}").body
    assert listed["superseded"] is True


def test_a_row_only_moves_on_from_the_object_its_writer_saw(lambda_env, settings, bucket):
    """Concurrent deliveries decide from the row they read: a write decided from an object the
    row no longer names changes nothing (the loser reads the row again and decides again)."""
    from lambdas import runtime

    key = insert_upload(settings, bucket, size=SIZE)
    upload_id = upload_row(settings, key)["id"]
    store = runtime.run(runtime.uploads())

    def mark(etag: str, replacing=None):
        return runtime.run(
            store.mark_uploaded(
                upload_id, size_actual=SIZE, etag=etag, version_id=f"v-{etag}", replacing=replacing
            )
        )

    first = mark("e1")
    assert first is not None and first.revision == "v-e1"
    assert mark("e0") is None  # another first arrival, decided while the row was pending
    second = mark("e2", replacing=first)
    assert second is not None and second.version_id == "v-e2"
    assert mark("e3", replacing=first) is None  # decided from the first object: stale
    assert runtime.run(store.mark_queued(first)) is None
    assert runtime.run(store.mark_rejected(upload_id, "stale", replacing=first)) is None
    assert runtime.run(store.mark_queued(second)).state == "queued"
    row = upload_row(settings, key)
    assert (row["state"], row["version_id"], row["etag"]) == ("queued", "v-e2", "e2")
