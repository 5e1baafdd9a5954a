"""A failed job's ``error`` is what its user reads (GET /jobs, the CLI, the web page): a short
message without the bucket, ARNs, account ids, URLs, SQL or a stack trace, whatever the
processor raised; the whole text stays in PostgreSQL's ``error_stack`` column and the logs."""

from __future__ import annotations

import asyncio

import pytest

from offload.jobs import JobRef
from tests.support.apigw import call
from tests.support.harness import (
    job_row,
    producer,
    queue_job_in_state,
    running_worker,
    wait_for,
    wait_for_state,
)

KEY = "uploads/user-a/up1/photo.jpg"
# What the test processors' texts hold (tests/support/processors.py: _internal_names).
INTERNAL = ("arn:aws", "123456789012", "s3://", "amazonaws.com", "X-Amz-Signature")


def _fail(settings, name: str, bucket: str) -> tuple[dict, object]:
    """Run a ``name`` job of user-a (one attempt) until failed; its row and bullmq job."""
    ref = JobRef(bucket=bucket, key=KEY, owner="user-a", upload_id="up1")

    async def scenario():
        async with producer(settings) as prod, running_worker(settings):
            job_id = await prod.enqueue(name, ref, {"attempts": 1})
            row = await wait_for_state(settings, job_id, "failed", timeout_s=30)
            job = await wait_for(lambda: queue_job_in_state(prod.queue, job_id, "failed"))
            return row, job

    return asyncio.run(scenario())


def assert_shows_no_internal_name(text: str, bucket: str) -> None:
    for secret in (bucket, *INTERNAL, "Traceback", "SELECT"):
        assert secret not in text, (secret, text)


@pytest.mark.parametrize(
    ("processor", "shown"),
    [
        # an unexpected exception: its words, less the names
        ("fail_naming_internals", "RuntimeError: cannot write [hidden] User: [hidden] is not"),
        # a processor's own permanent error that quotes too much
        ("fail_permanently_naming_internals", "PermanentJobError: not an image: cannot write"),
        # botocore: the code only
        ("fail_with_client_error", "ClientError: storage request failed (AccessDenied)"),
        # psycopg: no SQL
        ("fail_with_sql_error", "UndefinedTable: internal database error"),
    ],
)
def test_a_failed_jobs_error_names_nothing_internal(lambda_env, settings, bucket, processor, shown):
    row, job = _fail(settings, processor, bucket)
    assert row["error_message"].startswith(shown), row["error_message"]
    assert_shows_no_internal_name(row["error_message"], bucket)
    # The whole story is kept for operators: the stack has the original text.
    assert bucket in row["error_stack"] or "secret_table" in row["error_stack"]
    # bullmq's failed reason (Bull Board, the reconciler) is the same public text.
    assert job.failedReason == row["error_message"]
    # And the API shows the job's user exactly that.
    answer = call("GET", f"/jobs/{row['id']}")
    assert answer.status == 200 and answer.body["error"] == row["error_message"]


def test_the_api_redacts_an_error_stored_by_another_writer(lambda_env, settings, bucket):
    """A row written before the writers redacted, or by a tool other than our worker: the API
    still shows no internal name."""
    import psycopg

    row, _ = _fail(settings, "fail_always", bucket)
    stored = f"denied on arn:aws:s3:::{bucket}/{KEY} (bucket {bucket})"
    with psycopg.connect(
        settings.database_url, options=f"-c search_path={settings.database_schema}"
    ) as conn:
        conn.execute("UPDATE jobs SET error_message = %s WHERE id = %s", (stored, row["id"]))
    shown = call("GET", f"/jobs/{row['id']}").body["error"]
    assert shown == "denied on [hidden] (bucket [hidden])"
    listed = call("GET", "/jobs").body["jobs"]
    assert [job["error"] for job in listed] == [shown]
    assert job_row(settings, row["id"])["error_message"] == stored  # stored as written


def test_an_uploads_error_is_shown_without_internal_names(lambda_env, settings, bucket):
    """An upload's ``error`` (a rejection's reason) goes through the same redaction."""
    import psycopg

    created = call(
        "POST", "/uploads", body={"filename": "a.jpg", "size": 5, "contentType": "image/jpeg"}
    )
    assert created.status == 201
    stored = f"object s3://{bucket}/x is 7 bytes, 5 were announced (bucket {bucket})"
    with psycopg.connect(
        settings.database_url, options=f"-c search_path={settings.database_schema}"
    ) as conn:
        conn.execute(
            "UPDATE uploads SET state = 'rejected', error = %s WHERE id = %s",
            (stored, created.body["id"]),
        )
    shown = call("GET", f"/uploads/{created.body['id']}").body["error"]
    assert shown == "object [hidden] is 7 bytes, 5 were announced (bucket [hidden])"
