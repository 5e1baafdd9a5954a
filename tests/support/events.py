"""Lambda-side test helpers: a LambdaContext, SQS event batches (from real moto messages or
hand-made in AWS's format), S3 -> SQS notification wiring in moto, upload rows, and reads of
the queue and the status tables."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any
from urllib.parse import quote_plus

import psycopg
from psycopg.rows import dict_row

from offload.jobs import JobRef
from offload.keys import UploadKey
from offload.pipelines import FINALIZE
from offload.queue import open_queue
from offload.settings import Settings
from offload_local.aws_resources import REGION, notify_object_created, queue_arn
from offload_local.containers import LambdaContext
from offload_local.sqs_poller import from_sqs_messages, sqs_event, sqs_record

# The local stack's: the same context object and SQS event format for handler tests.
FakeContext = LambdaContext
__all__ = ["FakeContext", "from_sqs_messages", "sqs_event", "sqs_record"]


def failed_ids(response: dict[str, Any]) -> set[str]:
    return {item["itemIdentifier"] for item in response["batchItemFailures"]}


def invoke_enqueue(event: dict[str, Any]) -> dict[str, Any]:
    """The enqueue Lambda's handler, in-process, with one SQS batch."""
    from lambdas import enqueue

    return enqueue.handler(event, FakeContext())


def invoke_reconciler() -> dict[str, Any]:
    """One scheduled run of the reconciler Lambda, in-process; returns its report."""
    from lambdas import reconciler

    return reconciler.handler({}, FakeContext())


# --- S3 event notifications in AWS's format (docs sample, event version 2.1) -------------------


def s3_record(
    bucket: str,
    key: str,
    size: int | None,
    etag: str | None,
    *,
    event_name: str = "ObjectCreated:Put",
    version_id: str | None = None,
) -> dict[str, Any]:
    obj: dict[str, Any] = {"key": quote_plus(key, safe="/"), "sequencer": "0055AED6DCD90281E5"}
    if size is not None:
        obj["size"] = size
    if etag is not None:
        obj["eTag"] = etag
    if version_id is not None:
        obj["versionId"] = version_id
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": REGION,
        "eventTime": "2026-01-01T00:00:00.000Z",
        "eventName": event_name,
        "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "203.0.113.10"},
        "responseElements": {
            "x-amz-request-id": "C3D13FE58DE4C810",
            "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD",
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "uploads",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": obj,
        },
    }


def s3_body(*records: dict[str, Any]) -> str:
    return json.dumps({"Records": list(records)})


def s3_test_event_body(bucket: str) -> str:
    return json.dumps(
        {
            "Service": "Amazon S3",
            "Event": "s3:TestEvent",
            "Time": "2026-01-01T00:00:00.000Z",
            "Bucket": bucket,
            "RequestId": "5582815E1AEA5ADF",
            "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE",
        }
    )


# --- moto S3 -> SQS wiring ------------------------------------------------------------------


def wire_notifications(s3: Any, sqs: Any, bucket: str) -> str:
    """An SQS queue receiving the bucket's ObjectCreated events under uploads/ (the local
    stack's wiring); returns its URL."""
    url = sqs.create_queue(QueueName=f"{bucket}-events")["QueueUrl"]
    notify_object_created(s3, bucket, queue_arn(sqs, url))
    return url


def receive_all(sqs: Any, url: str, expected: int | None = None) -> list[dict[str, Any]]:
    """Every message waiting in the queue (deleted from it, as Lambda's poller would)."""
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + 5
    while True:
        batch = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, AttributeNames=["All"]
        ).get("Messages", [])
        for message in batch:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        messages.extend(batch)
        if not batch and (expected is None or len(messages) >= expected):
            return messages
        if time.monotonic() > deadline:
            raise TimeoutError(f"expected {expected} messages, got {len(messages)}")
        if not batch:
            time.sleep(0.05)


# --- PostgreSQL rows ------------------------------------------------------------------------


def _connect(settings: Settings) -> psycopg.Connection:
    conn = psycopg.connect(
        settings.database_url,
        options=f"-c search_path={settings.database_schema}",
        autocommit=True,
    )
    conn.row_factory = dict_row
    return conn


def insert_upload(
    settings: Settings,
    bucket: str,
    *,
    filename: str = "file.bin",
    content_type: str = "application/octet-stream",
    size: int | None = 5,
    owner: str | None = None,
    upload_id: str | None = None,
    state: str = "pending",
    tier: str | None = None,
) -> str:
    """An upload row as the API creates it; returns the object key it was handed out for."""
    owner = owner or f"user-{uuid.uuid4().hex[:8]}"
    upload_id = upload_id or uuid.uuid4().hex
    key = str(UploadKey.build(owner, upload_id, filename))
    with _connect(settings) as conn:
        conn.execute(
            "INSERT INTO uploads (id, owner, bucket, key, filename, content_type, size_announced,"
            " state, tier) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (upload_id, owner, bucket, key, filename, content_type, size, state, tier),
        )
    return key


def queued_upload(
    settings: Settings, s3: Any, bucket: str, body: bytes = b"hello", owner: str | None = None
) -> tuple[str, JobRef]:
    """An upload whose object is in S3 and whose row names it (``queued``, as the enqueue path
    leaves it): its key and the reference its flow's jobs carry."""
    key = insert_upload(settings, bucket, size=len(body), owner=owner)
    etag = s3.put_object(Bucket=bucket, Key=key, Body=body)["ETag"].strip('"')
    sql(settings, "UPDATE uploads SET state = 'queued', etag = %s WHERE key = %s", etag, key)
    row = upload_row(settings, key)
    return key, JobRef(bucket, key, etag=etag, owner=row["owner"], upload_id=row["id"])


def upload_row(settings: Settings, key: str) -> dict[str, Any]:
    with _connect(settings) as conn:
        row = conn.execute("SELECT * FROM uploads WHERE key = %s", (key,)).fetchone()
    assert row is not None, key
    return row


def job_rows(settings: Settings, upload_id: str | None = None) -> list[dict[str, Any]]:
    with _connect(settings) as conn:
        if upload_id is None:
            return conn.execute("SELECT * FROM jobs ORDER BY id").fetchall()
        return conn.execute(
            "SELECT * FROM jobs WHERE upload_id = %s ORDER BY name", (upload_id,)
        ).fetchall()


def step_rows(settings: Settings, upload_id: str | None = None) -> list[dict[str, Any]]:
    """The rows of pipeline steps (``job_rows`` without the flows' ``finalize`` parents)."""
    return [row for row in job_rows(settings, upload_id) if row["name"] != FINALIZE]


def sql(settings: Settings, statement: str, *params: Any) -> list[dict[str, Any]]:
    with _connect(settings) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def age_rows(settings: Settings, table: str, seconds: int, where: str = "true") -> None:
    """Pretend rows were last updated ``seconds`` ago (the reconciler only looks at old rows)."""
    assert table in ("uploads", "jobs")
    sql(
        settings,
        f"UPDATE {table} SET updated_at = now() - make_interval(secs => %s) WHERE {where}",
        seconds,
    )


# --- the queue ------------------------------------------------------------------------------


def queue_call(settings: Settings, fn: Any) -> Any:
    """Run ``await fn(queue)`` against a queue of its own (a fresh connection and loop)."""

    async def go() -> Any:
        queue = open_queue(settings)
        try:
            return await fn(queue)
        finally:
            await queue.close()

    return asyncio.run(go())


def queue_jobs(settings: Settings) -> dict[str, Any]:
    """Every job in the queue, by id."""

    async def read(queue: Any) -> dict[str, Any]:
        jobs = await queue.getJobs(
            ["wait", "active", "delayed", "failed", "completed", "prioritized", "waiting-children"]
        )
        return {job.id: job for job in jobs}

    return queue_call(settings, read)
