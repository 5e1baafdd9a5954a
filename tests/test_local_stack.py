"""End to end through the local stack (python -m offload_local): the API behind the gateway
and its Cognito check, presigned uploads to S3 over HTTP, the S3 event through SQS to the
enqueue Lambda, a worker, and the status the API shows."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest

from offload_local import aws_resources
from tests.support.local_stack import (
    PLUS_OPEN_UPLOADS,
    ApiClient,
    http,
    presigned_post,
    wait_until,
)

MiB = 1 << 20
pytestmark = pytest.mark.timeout(240)


def _finished_jobs(client: ApiClient, upload_id: str) -> list[dict] | None:
    answer = client.call("GET", "/jobs?limit=100")
    assert answer.status == 200, answer.body
    jobs = [job for job in answer.body["jobs"] if job["uploadId"] == upload_id]
    if jobs and all(job["state"] in ("completed", "failed") for job in jobs):
        return jobs
    return None


def test_multipart_upload_reaches_completed_with_the_right_sha256(local_stack, tmp_path):
    info = local_stack.info
    client = ApiClient(info)
    data = os.urandom(21 * MiB)
    announced = {"filename": "big sample.bin", "size": len(data), "contentType": "video/mp4"}
    created = client.call("POST", "/uploads", announced)
    assert created.status == 201, created.body
    upload = created.body
    assert upload["type"] == "multipart" and upload["partCount"] >= 3
    parts = []
    for part in upload["partUrls"]:
        start = (part["partNumber"] - 1) * upload["partSize"]
        answer = http("PUT", part["url"], data[start : start + upload["partSize"]])
        assert answer.status == 200
        parts.append({"partNumber": part["partNumber"], "etag": answer.headers["etag"]})
    done = client.call("POST", f"/uploads/{upload['id']}/complete", {"parts": parts})
    assert done.status == 200, done.body

    jobs = wait_until(lambda: _finished_jobs(client, upload["id"]), what="jobs finished")
    inspect = next(job for job in jobs if job["name"] == "inspect")
    assert inspect["state"] == "completed", inspect
    assert inspect["filename"] == "big sample.bin"
    assert inspect["progress"] == 100
    assert inspect["result"]["sha256"] == hashlib.sha256(data).hexdigest()
    manifest_link = next(link for link in inspect["links"] if link["name"] == "manifest.json")
    fetched = http("GET", manifest_link["url"]).body
    manifest = fetched if isinstance(fetched, dict) else json.loads(fetched)
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["size"] == len(data)
    row = wait_until(lambda: _final_upload(client, upload["id"]), what="upload processed")
    assert row["state"] == "processed" and row["sizeActual"] == len(data)


def _post_small_file(client: ApiClient, filename: str, data: bytes) -> str:
    """Upload ``data`` by the presigned POST the API hands out, as the web page does; returns
    the upload id."""
    created = client.call(
        "POST", "/uploads", {"filename": filename, "size": len(data), "contentType": "text/csv"}
    )
    assert created.status == 201, created.body
    presigned_post(created.body["post"], filename, data, "text/csv")
    return created.body["id"]


def _final_upload(client: ApiClient, upload_id: str) -> dict | None:
    answer = client.call("GET", f"/uploads/{upload_id}")
    assert answer.status == 200, answer.body
    return answer.body if answer.body["state"] in ("processed", "failed") else None


def _upload_events(info, upload_id: str) -> list[dict]:
    """The Upload Processed / Failed events of ``upload_id`` the stack's rule copied to its
    queue (others' are left in place: another test may be waiting for them)."""
    sqs = aws_resources.client("sqs", info.moto_endpoint)
    found = []
    answer = sqs.receive_message(
        QueueUrl=info.upload_events_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
    )
    for message in answer.get("Messages", []):
        event = json.loads(message["Body"])
        detail = (
            event["detail"] if isinstance(event["detail"], dict) else json.loads(event["detail"])
        )
        if detail["uploadId"] == upload_id:
            found.append(event | {"detail": detail})
            sqs.delete_message(
                QueueUrl=info.upload_events_queue_url, ReceiptHandle=message["ReceiptHandle"]
            )
    return found


def test_single_upload_by_presigned_post_is_processed(local_stack):
    """The whole pipeline: the upload's flow (inspect, then finalize) ends with the upload
    ``processed``, its result.json in S3 and an ``Upload Processed`` event on the bus."""
    client = ApiClient(local_stack.info)
    data = b"id,name\n1,offload\n"
    upload_id = _post_small_file(client, "rows.csv", data)
    jobs = wait_until(lambda: _finished_jobs(client, upload_id), what="jobs finished")
    inspect = next(job for job in jobs if job["name"] == "inspect")
    assert inspect["state"] == "completed"
    assert inspect["result"]["sha256"] == hashlib.sha256(data).hexdigest()

    upload = wait_until(lambda: _final_upload(client, upload_id), what="upload processed")
    assert upload["state"] == "processed", upload
    assert upload["resultKey"].endswith(f"/{upload_id}/result.json")
    s3 = aws_resources.client("s3", local_stack.info.moto_endpoint)
    result = json.loads(
        s3.get_object(Bucket=local_stack.info.bucket, Key=upload["resultKey"])["Body"].read()
    )
    assert result["uploadId"] == upload_id
    assert result["steps"]["inspect"]["result"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert result["steps"]["inspect"]["result"]["content_type"] == "text/plain"  # sniffed
    events = wait_until(
        lambda: _upload_events(local_stack.info, upload_id), what="Upload Processed event"
    )
    assert [e["detail-type"] for e in events] == ["Upload Processed"]
    assert events[0]["detail"]["result"] == {
        "bucket": local_stack.info.bucket,
        "key": upload["resultKey"],
    }


def test_the_gateway_checks_the_cognito_token(local_stack):
    info = local_stack.info
    url = info.api_url + "/jobs"
    assert http("GET", url).status == 401
    assert http("GET", url, headers={"Authorization": "not-a-token"}).status == 401
    token = ApiClient(info).token
    header, payload, signature = token.split(".")
    forged = f"{header}.{payload}.{signature[::-1]}"
    assert http("GET", url, headers={"Authorization": forged}).status == 401
    assert http("GET", url, headers={"Authorization": f"Bearer {token}"}).status == 200
    unknown = http("GET", info.api_url + "/nothing-here", headers={"Authorization": token})
    assert unknown.status == 403  # API Gateway: "Missing Authentication Token"


@pytest.mark.parametrize("declared", ["-1", "abc", "1e3", "\u0661"])
def test_a_content_length_that_is_no_length_is_400(local_stack, declared):
    """``int()`` took "-1" (then read() waited for the connection to close) and raised on the
    others: a 502 from the gateway where API Gateway answers 400."""
    target = urlsplit(local_stack.info.api_url)
    request = (
        f"POST {target.path}/uploads HTTP/1.1\r\nHost: {target.netloc}\r\n"
        f"Content-Length: {declared}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((target.hostname, target.port), timeout=10) as conn:
        conn.sendall(request.encode())
        status_line = conn.makefile("rb").readline().decode()
    assert status_line.split()[1] == "400", status_line


def test_stack_json_is_readable_by_its_owner_only(local_stack):
    """It holds the demo user's password."""
    mode = (local_stack.options.workdir / "stack.json").stat().st_mode
    assert mode & 0o777 == 0o600, oct(mode)


def test_each_user_sees_only_their_own_jobs(local_stack):
    info = local_stack.info
    mine = ApiClient(info)
    upload_id = _post_small_file(mine, "mine.csv", b"id\n1\n")  # a job of mine, whatever ran before
    jobs = wait_until(lambda: _finished_jobs(mine, upload_id), what="my upload's jobs")
    pool = aws_resources.UserPool(info.user_pool_id, info.client_id)
    other = aws_resources.create_user(info.moto_endpoint, pool, "other@example.com")
    theirs = ApiClient(info, other.username, other.password)
    assert theirs.call("GET", "/jobs").body["jobs"] == []
    assert jobs
    for job in jobs:
        assert mine.call("GET", f"/jobs/{job['id']}").status == 200
        assert theirs.call("GET", f"/jobs/{job['id']}").status == 404
        assert theirs.call("POST", f"/jobs/{job['id']}/retry").status == 404
    assert mine.call("GET", f"/uploads/{upload_id}").status == 200
    assert theirs.call("GET", f"/uploads/{upload_id}").status == 404


def test_a_malformed_event_ends_in_the_dead_letter_queue(local_stack):
    info = local_stack.info
    sqs = aws_resources.client("sqs", info.moto_endpoint)
    sqs.send_message(QueueUrl=info.events_queue_url, MessageBody="{not json")

    def in_dlq():
        return sqs.receive_message(QueueUrl=info.events_dlq_url, WaitTimeSeconds=1).get("Messages")

    messages = wait_until(in_dlq, timeout_s=60, what="the bad event in the DLQ")
    assert messages[0]["Body"] == "{not json"


def test_a_plus_users_group_reaches_the_api_and_their_quota_answers_429(local_stack):
    """A user put in the ``plus`` group gets it in their ID token (Cognito, here moto), the
    gateway's authorizer passes it on as API Gateway does, and the API applies the plus
    quota: one open upload on this stack (tests/support/local_stack.py), then 429 with
    Retry-After through the gateway."""
    info = local_stack.info
    pool = aws_resources.UserPool(info.user_pool_id, info.client_id)
    plus = aws_resources.create_user(info.moto_endpoint, pool, "plus@example.com")
    aws_resources.add_to_group(info.moto_endpoint, pool, plus.username, "plus")
    client = ApiClient(info, plus.username, plus.password)
    payload = client.token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["cognito:groups"] == ["plus"]

    small = {"filename": "a.csv", "size": 10, "contentType": "text/csv"}
    uploads = [client.call("POST", "/uploads", small) for _ in range(PLUS_OPEN_UPLOADS)]
    assert [u.status for u in uploads] == [201] * PLUS_OPEN_UPLOADS
    refused = client.call("POST", "/uploads", small)
    assert refused.status == 429, refused.body
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.body["tier"] == "plus" and refused.body["quota"] == "openUploads"
    # The demo user (in no group: standard, without limits on this stack) is not refused.
    assert ApiClient(info).call("POST", "/uploads", small).status == 201
    assert client.call("DELETE", f"/uploads/{uploads[0].body['id']}").status == 200
    assert client.call("POST", "/uploads", small).status == 201


def test_an_export_asked_for_through_the_gateway_is_delivered_as_a_link(local_stack):
    """POST /jobs through the gateway (its Cognito check, its routing), run by the stack's
    worker process, followed with GET /jobs/{id}, and the CSV fetched from S3 with its link."""
    client = ApiClient(local_stack.info)
    today = datetime.now(UTC).date().isoformat()
    upload_id = _post_small_file(client, "rows.csv", b"id\n1\n")  # a job of today, to export
    wait_until(lambda: _finished_jobs(client, upload_id), what="the upload's jobs")
    asked = client.call("POST", "/jobs", {"name": "export", "params": {"from": today, "to": today}})
    assert asked.status == 202, asked.body

    def done() -> dict | None:
        job = client.call("GET", f"/jobs/{asked.body['id']}").body
        return job if job["state"] in ("completed", "failed") else None

    job = wait_until(done, what="the export")
    assert job["state"] == "completed", job
    (link,) = job["links"]
    fetched = http("GET", link["url"])
    assert fetched.status == 200
    text = fetched.body.decode()
    assert text.startswith("job_id,name,upload_id,state")
    assert upload_id in text
