"""Pending multipart uploads whose part URLs expired are aborted early by the reconciler: the
API and the reconciler Lambda in-process, S3 on the moto server, PostgreSQL and Redis real.

An upload's URLs are made to have expired long ago by moving its recorded expiry back
(``part_urls_expire_at``, compared with PostgreSQL's clock): that is the one fact the
reconciler goes by, and waiting an hour is not an option.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from offload import uploads
from offload.aws import s3_client
from offload.db.pool import create_pool
from offload.expired_uploads import ExpiryReport, abort_expired_uploads
from offload.settings import Settings
from tests.support.apigw import call
from tests.support.events import invoke_reconciler as reconcile
from tests.support.events import sql
from tests.test_api_uploads import SIZE, chunk, put_part, start_multipart, upload_row

GRACE_S = Settings().expired_upload_grace_s


@pytest.fixture
def payload() -> bytes:
    return os.urandom(SIZE)  # 4 parts of 5 MiB, the last one short


def urls_expired(settings, upload_id: str, ago_s: int) -> None:
    """As if the upload's latest part URLs had expired ``ago_s`` seconds ago."""
    sql(
        settings,
        "UPDATE uploads SET part_urls_expire_at = now() - make_interval(secs => %s) WHERE id = %s",
        ago_s,
        upload_id,
    )


def open_multipart(s3, bucket: str) -> set[str]:
    """Keys of the multipart uploads S3 still holds."""
    return {u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}


def send_all(view: dict, payload: bytes) -> list[dict[str, Any]]:
    """Every part of the upload, with URLs from the create answer; the parts for complete."""
    return [
        {
            "partNumber": part["partNumber"],
            "etag": put_part(part["url"], chunk(payload, view["partSize"], part["partNumber"])),
        }
        for part in view["partUrls"]
    ]


def test_grace_default_is_an_hour_past_the_url_expiry():
    assert GRACE_S == 3600
    assert Settings.from_env({"OFFLOAD_EXPIRED_UPLOAD_GRACE_S": "7200"}).expired_upload_grace_s
    with pytest.raises(ValueError, match=">= 60"):
        Settings.from_env({"OFFLOAD_EXPIRED_UPLOAD_GRACE_S": "0"})


def test_an_expired_upload_is_aborted_and_a_later_complete_is_refused(
    lambda_env, settings, s3, bucket, monkeypatch, payload
):
    expired = start_multipart(monkeypatch)
    parts = send_all(expired, payload)  # every part sent, but never completed
    fresh = start_multipart(monkeypatch)
    put_part(fresh["partUrls"][0]["url"], chunk(payload, fresh["partSize"], 1))
    lapsed = start_multipart(monkeypatch)  # expired, but still within the grace period
    put_part(lapsed["partUrls"][0]["url"], chunk(payload, lapsed["partSize"], 1))

    # the API recorded when the URLs it handed out expire
    row = upload_row(settings, fresh["id"])
    assert row["part_urls_expire_at"] == datetime.fromisoformat(fresh["expiresAt"])
    assert row["part_urls_expire_at"] - datetime.now(UTC) > timedelta(seconds=800)
    multipart_id = upload_row(settings, expired["id"])["multipart_upload_id"]
    urls_expired(settings, expired["id"], GRACE_S + 60)
    urls_expired(settings, lapsed["id"], GRACE_S - 120)

    report = reconcile()
    assert (report["expired_checked"], report["expired_aborted"]) == (1, 1)
    assert report["expired_abort_failed"] == 0
    row = upload_row(settings, expired["id"])
    assert row["state"] == "aborted" and row["error"].startswith("expired:")
    # S3 no longer has the multipart upload, nor its parts; the others are untouched
    assert open_multipart(s3, bucket) == {fresh["key"], lapsed["key"]}
    with pytest.raises(s3.exceptions.NoSuchUpload):
        s3.list_parts(Bucket=bucket, Key=expired["key"], UploadId=multipart_id)
    for kept in (fresh, lapsed):
        assert upload_row(settings, kept["id"])["state"] == "pending"
        status = call("GET", f"/uploads/{kept['id']}").body
        assert [p["partNumber"] for p in status["uploadedParts"]] == [1]

    # the client comes back: a clear 409 that says why, and nothing is assembled
    done = call("POST", f"/uploads/{expired['id']}/complete", body={"parts": parts})
    assert done.status == 409 and "expired" in done.message, done.body
    more = call("POST", f"/uploads/{expired['id']}/parts", body={"partNumbers": [1]})
    assert more.status == 409 and "expired" in more.message
    status = call("GET", f"/uploads/{expired['id']}").body
    assert status["state"] == "aborted" and status["error"].startswith("expired:")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=expired["key"])

    again = reconcile()
    assert (again["expired_checked"], again["expired_aborted"]) == (0, 0)


def test_an_upload_whose_urls_were_signed_again_is_left_alone(
    lambda_env, settings, s3, bucket, monkeypatch, payload
):
    """Resuming asks for fresh URLs: the expiry that counts is the latest one handed out."""
    view = start_multipart(monkeypatch, OFFLOAD_PART_URL_BATCH=1)
    first = put_part(view["partUrls"][0]["url"], chunk(payload, view["partSize"], 1))
    urls_expired(settings, view["id"], GRACE_S + 60)  # the first URLs are long gone ...
    more = call("POST", f"/uploads/{view['id']}/parts", body={"partNumbers": [2]})
    assert more.status == 200, more.body  # ... but the client resumed a moment ago
    recorded = upload_row(settings, view["id"])["part_urls_expire_at"]
    assert recorded == datetime.fromisoformat(more.body["expiresAt"])

    report = reconcile()
    assert (report["expired_checked"], report["expired_aborted"]) == (0, 0)
    assert upload_row(settings, view["id"])["state"] == "pending"
    assert open_multipart(s3, bucket) == {view["key"]}

    etags = {
        1: first,
        2: put_part(more.body["partUrls"][0]["url"], chunk(payload, view["partSize"], 2)),
    }
    for number in (3, 4):
        url = call("POST", f"/uploads/{view['id']}/parts", body={"partNumbers": [number]})
        etags[number] = put_part(
            url.body["partUrls"][0]["url"], chunk(payload, view["partSize"], number)
        )
    parts = [{"partNumber": n, "etag": e} for n, e in sorted(etags.items())]
    done = call("POST", f"/uploads/{view['id']}/complete", body={"parts": parts})
    assert done.status == 200, done.body
    assert s3.head_object(Bucket=bucket, Key=view["key"])["ContentLength"] == len(payload)


def _reconciler_pass(settings, s3_factory: Callable[[], Any]) -> ExpiryReport:
    """One pass of the reconciler's expiry repair on a pool and an event loop of its own."""

    async def run() -> ExpiryReport:
        pool = create_pool(settings.database_url, settings.database_schema, max_size=2)
        await pool.open(wait=True, timeout=10)
        try:
            return await abort_expired_uploads(pool, s3_factory, GRACE_S, 10)
        finally:
            await pool.close()

    return asyncio.run(run())


def _on_a_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` on a thread of its own (the API and the reconciler each run their own event
    loop, as two Lambdas do), waited for."""
    result: list[Any] = []
    acting = threading.Thread(target=lambda: result.append(fn()))
    acting.start()
    acting.join(60)
    assert result, "did not finish"
    return result[0]


def test_a_client_that_resumes_or_completes_meanwhile_wins_over_the_reconciler(
    lambda_env, settings, s3, bucket, monkeypatch, payload, moto_endpoint
):
    resuming = start_multipart(monkeypatch)
    put_part(resuming["partUrls"][0]["url"], chunk(payload, resuming["partSize"], 1))
    completing = start_multipart(monkeypatch)
    parts = send_all(completing, payload)
    for view in (resuming, completing):
        urls_expired(settings, view["id"], GRACE_S + 60)
    answers: dict[str, Any] = {}

    def client() -> bool:
        answers["parts"] = call(
            "POST", f"/uploads/{resuming['id']}/parts", body={"partNumbers": [2, 3, 4]}
        )
        answers["complete"] = call(
            "POST", f"/uploads/{completing['id']}/complete", body={"parts": parts}
        )
        return True

    def s3_after_the_client() -> Any:
        """Called by the pass once it has read its candidates, before it claims any."""
        _on_a_thread(client)
        return s3_client(moto_endpoint)

    report = _reconciler_pass(settings, s3_after_the_client)
    assert answers["parts"].status == 200 and answers["complete"].status == 200
    assert (report.checked, report.aborted, report.completed) == (2, 0, 1)
    assert upload_row(settings, resuming["id"])["state"] == "pending"
    assert open_multipart(s3, bucket) == {resuming["key"]}
    # the completed one waits for its S3 event, as any completed upload does
    assert upload_row(settings, completing["id"])["state"] == "pending"
    assert s3.head_object(Bucket=bucket, Key=completing["key"])["ContentLength"] == len(payload)


def test_an_upload_claimed_while_its_complete_is_under_way_is_not_assembled(
    lambda_env, settings, s3, bucket, monkeypatch, payload, moto_endpoint
):
    """The other order: the API has read the row as pending and is checking the parts with
    S3 when the reconciler claims it. The API's own conditional UPDATE then finds it aborted:
    409, and S3 assembles nothing."""
    view = start_multipart(monkeypatch)
    parts = send_all(view, payload)
    urls_expired(settings, view["id"], GRACE_S + 60)
    passes: list[ExpiryReport] = []
    list_parts = uploads.list_uploaded_parts

    def reconciler_meanwhile(*args: Any, **kwargs: Any) -> Any:
        held = list_parts(*args, **kwargs)  # every part is there: the API goes on ...
        if not passes:  # ... but the reconciler runs right then, once
            passes.append(
                _on_a_thread(lambda: _reconciler_pass(settings, lambda: s3_client(moto_endpoint)))
            )
        return held

    monkeypatch.setattr(uploads, "list_uploaded_parts", reconciler_meanwhile)
    done = call("POST", f"/uploads/{view['id']}/complete", body={"parts": parts})
    assert (passes[0].checked, passes[0].aborted) == (1, 1)
    assert done.status == 409 and "expired" in done.message, done.body
    assert upload_row(settings, view["id"])["state"] == "aborted"
    assert open_multipart(s3, bucket) == set()
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=view["key"])


def test_an_upload_the_lifecycle_rule_aborted_first_is_marked_aborted(
    lambda_env, settings, s3, bucket, monkeypatch, payload
):
    """S3 no longer knows the multipart upload (NoSuchUpload): the row is aborted all the
    same, so the client learns why."""
    view = start_multipart(monkeypatch)
    multipart_id = upload_row(settings, view["id"])["multipart_upload_id"]
    s3.abort_multipart_upload(Bucket=bucket, Key=view["key"], UploadId=multipart_id)
    urls_expired(settings, view["id"], GRACE_S + 60)
    report = reconcile()
    assert (report["expired_aborted"], report["expired_abort_failed"]) == (1, 0)
    assert upload_row(settings, view["id"])["state"] == "aborted"
