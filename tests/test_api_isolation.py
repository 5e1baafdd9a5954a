"""Nothing of one user is visible to, or changeable by, another: for every route, user-b gets
exactly the answer a missing id gets (404, same body), and user-a's data is left as it was."""

from __future__ import annotations

import asyncio
import os

import psycopg
import requests
from psycopg.rows import dict_row

from offload.jobs import JobRef
from offload.queue import producer
from offload.uploads import MiB
from tests.support.apigw import call, configure, run_jobs
from tests.support.harness import job_row

NOT_FOUND_UPLOAD = {"message": "upload not found"}
NOT_FOUND_JOB = {"message": "job not found"}


def upload_row(settings, upload_id: str) -> dict:
    with psycopg.connect(
        settings.database_url, options=f"-c search_path={settings.database_schema}"
    ) as conn:
        conn.row_factory = dict_row
        return conn.execute("SELECT * FROM uploads WHERE id = %s", (upload_id,)).fetchone()


def test_upload_routes_hide_other_users_uploads(lambda_env, settings, s3, bucket, monkeypatch):
    configure(monkeypatch, OFFLOAD_SINGLE_UPLOAD_MAX_BYTES=1)
    body = {"filename": "a.bin", "size": 11 * MiB, "contentType": "application/octet-stream"}
    mine = call("POST", "/uploads", sub="user-a", body=body).body
    part = os.urandom(5 * MiB)
    etag = requests.put(mine["partUrls"][0]["url"], data=part, timeout=30).headers["ETag"]
    configure(monkeypatch, OFFLOAD_SINGLE_UPLOAD_MAX_BYTES=100 * MiB)
    single = call("POST", "/uploads", sub="user-a", body=body | {"size": 10}).body
    before = {u: upload_row(settings, u) for u in (mine["id"], single["id"])}
    missing = "AAAAAAAAAAAAAAAAAAAAAA"

    for target in (mine["id"], single["id"], missing):
        attempts = [
            call("GET", f"/uploads/{target}", sub="user-b"),
            call("POST", f"/uploads/{target}/parts", sub="user-b", body={"partNumbers": [2]}),
            call(
                "POST",
                f"/uploads/{target}/complete",
                sub="user-b",
                body={"parts": [{"partNumber": 1, "etag": etag}]},
            ),
            call("DELETE", f"/uploads/{target}", sub="user-b"),
        ]
        for answer in attempts:
            assert (answer.status, answer.body) == (404, NOT_FOUND_UPLOAD), answer.body

    # user-a's uploads are untouched: rows, the open multipart upload and its part
    for upload_id, row in before.items():
        assert upload_row(settings, upload_id) == row
    parts = s3.list_parts(
        Bucket=bucket, Key=mine["key"], UploadId=before[mine["id"]]["multipart_upload_id"]
    )["Parts"]
    assert [(p["PartNumber"], p["ETag"]) for p in parts] == [(1, etag)]
    own = call("GET", f"/uploads/{mine['id']}", sub="user-a")
    assert own.status == 200 and own.body["uploadedParts"][0]["etag"] == etag


def test_job_routes_hide_other_users_jobs(lambda_env, settings):
    failed, done = asyncio.run(
        run_jobs(
            settings,
            [
                ("fail_always", JobRef("bkt-x", "k1", owner="user-a", upload_id="u1"),
                 {"attempts": 1}),
                ("noop", JobRef("bkt-x", "k2", owner="user-a", upload_id="u2"), {}),
            ],
        )
    )  # fmt: skip
    before = {job_id: job_row(settings, job_id) for job_id in (failed, done)}

    listed = call("GET", "/jobs", sub="user-b", query={"limit": "100"})
    assert listed.status == 200 and listed.body == {"jobs": [], "nextCursor": None}
    for job_id in (failed, done, "inspect-0000000000000000000000000000000000000000"):
        for method, path in (("GET", f"/jobs/{job_id}"), ("POST", f"/jobs/{job_id}/retry")):
            answer = call(method, path, sub="user-b")
            assert (answer.status, answer.body) == (404, NOT_FOUND_JOB), answer.body

    for job_id, row in before.items():
        assert job_row(settings, job_id) == row

    async def queue_state(job_id: str) -> str:
        async with producer(settings) as made:
            return await (await made.queue.getJob(job_id)).getState()

    assert asyncio.run(queue_state(failed)) == "failed"
    assert {j["id"] for j in call("GET", "/jobs", sub="user-a").body["jobs"]} == {failed, done}
    assert call("POST", f"/jobs/{failed}/retry", sub="user-a").status == 200
