"""Jobs a user asks for (POST /jobs, offload.requested_jobs): validated by name and parameters,
recorded within the per-user limits, run by the worker, followed with GET /jobs/{id} and
delivered as a link. The API handler runs in process as the API's database role; the worker
is the real one; S3 is moto."""

from __future__ import annotations

import asyncio
import csv
import io
import urllib.request
from dataclasses import replace
from datetime import date

import psycopg
import pytest
from bullmq import Queue

from offload.jobs import JobRef, job_id
from offload.queue import open_queue, producer
from offload.settings import Settings
from tests.support.apigw import call, configure
from tests.support.harness import running_worker, wait_for_state
from tests.support.redis_acl import as_environment

EXPORT = {"name": "export", "params": {"from": "2026-03-01", "to": "2026-03-31"}}


def _sql(settings: Settings, statement: str, params=()) -> None:
    with psycopg.connect(
        settings.database_url, options=f"-c search_path={settings.database_schema}"
    ) as conn:
        conn.execute(statement, params)


async def _seed(settings: Settings) -> dict[str, str]:
    """Jobs of user-a in and out of March 2026 (one whose error a spreadsheet would run as a
    formula) and one of user-b in March."""
    refs = {
        "march": ("inspect", JobRef("b", "uploads/user-a/u1/f", etag="1", owner="user-a")),
        "formula": ("inspect", JobRef("b", "uploads/user-a/u2/f", etag="2", owner="user-a")),
        "april": ("inspect", JobRef("b", "uploads/user-a/u3/f", etag="3", owner="user-a")),
        "other": ("inspect", JobRef("b", "uploads/user-b/u4/f", etag="4", owner="user-b")),
    }
    ids = {}
    async with producer(settings) as made:
        for label, (name, ref) in refs.items():
            ids[label] = await made.enqueue(name, ref)
    when = {"march": "2026-03-01", "formula": "2026-03-31 23:59", "april": "2026-04-01"}
    for label, at in {**when, "other": "2026-03-10"}.items():
        _sql(
            settings,
            "UPDATE jobs SET created_at = %s, state = 'failed', error_message = %s WHERE id = %s",
            (f"{at}+00", '=HYPERLINK("x")' if label == "formula" else "bad", ids[label]),
        )
    # Out of the queue: only the rows matter to an export, and the worker must not run them.
    queue = open_queue(as_environment(settings))
    await queue.obliterate({"force": True})
    await queue.close()
    return ids


def test_an_export_is_accepted_run_followed_and_delivered_as_a_link(
    lambda_env, settings, bucket, moto_endpoint
):
    ids = asyncio.run(_seed(settings))
    answer = call("POST", "/jobs", body=EXPORT)
    assert answer.status == 202, answer.body
    job = answer.body
    assert (job["name"], job["state"], job["links"]) == ("export", "queued", [])
    assert job["id"].startswith("export-")

    worker_settings = replace(settings, upload_bucket=bucket, s3_endpoint_url=moto_endpoint)

    async def run() -> None:
        async with running_worker(worker_settings):
            await wait_for_state(settings, job["id"], "completed", timeout_s=30)

    asyncio.run(run())
    done = call("GET", f"/jobs/{job['id']}")
    assert done.status == 200 and done.body["state"] == "completed"
    assert done.body["result"]["rows"] == 2 and done.body["result"]["truncated"] is False
    (link,) = done.body["links"]
    with urllib.request.urlopen(link["url"]) as response:
        rows = list(csv.reader(io.StringIO(response.read().decode())))
    assert rows[0][:4] == ["job_id", "name", "upload_id", "state"]
    by_id = {row[0]: row for row in rows[1:]}
    assert set(by_id) == {ids["march"], ids["formula"]}  # the period, the caller's only
    assert by_id[ids["formula"]][7] == '\'=HYPERLINK("x")'  # never run as a formula
    # Another user sees no such job.
    assert call("GET", f"/jobs/{job['id']}", sub="user-b").status == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"name": "export", "params": {}, "extra": 1}, "body"),
        ({"name": "obliterate", "params": {}}, "name"),
        ({"name": "retention", "params": {}}, "name"),  # a system job cannot be asked for
        ({"params": EXPORT["params"]}, "name"),
        ({"name": "export"}, "params"),
        ({"name": "export", "params": {"from": "2026-03-01"}}, "params.to"),
        ({"name": "export", "params": {"from": "2026-02-30", "to": "2026-03-01"}}, "params.from"),
        ({"name": "export", "params": {"from": "1 March", "to": "2026-03-01"}}, "params.from"),
        ({"name": "export", "params": {"from": "2026-03-02", "to": "2026-03-01"}}, "params.to"),
        ({"name": "export", "params": {"from": "2025-01-01", "to": "2026-03-01"}}, "params.to"),
        ({"name": "export", "params": {"from": 20260301, "to": "2026-03-01"}}, "params.from"),
        ({"name": "export", "params": {**EXPORT["params"], "owner": "user-b"}}, "params"),
    ],
)
def test_an_unknown_name_or_bad_parameters_are_400_and_queue_nothing(
    lambda_env, settings, body, field
):
    answer = call("POST", "/jobs", body=body)
    assert answer.status == 400, answer.body
    assert answer.body["field"] == field
    assert call("GET", "/jobs").body["jobs"] == []


def test_over_the_per_user_limits_is_429_with_retry_after(lambda_env, settings, monkeypatch):
    configure(monkeypatch, OFFLOAD_REQUESTED_JOBS_IN_FLIGHT=2, OFFLOAD_REQUESTED_JOBS_PER_HOUR=3)
    first, second = (call("POST", "/jobs", body=EXPORT) for _ in range(2))
    assert (first.status, second.status) == (202, 202)
    over = call("POST", "/jobs", body=EXPORT)
    assert over.status == 429
    assert (over.body["quota"], over.body["limit"]) == ("requestedJobsInFlight", 2)
    assert int(over.headers["retry-after"]) > 0
    assert call("POST", "/jobs", body=EXPORT, sub="user-b").status == 202  # per user
    _sql(settings, "UPDATE jobs SET state = 'completed' WHERE id = %s", (first.body["id"],))
    assert call("POST", "/jobs", body=EXPORT).status == 202
    per_hour = call("POST", "/jobs", body=EXPORT)
    assert per_hour.status == 429 and per_hour.body["quota"] in (
        "requestedJobsInFlight",
        "requestedJobsPerHour",
    )
    _sql(settings, "UPDATE jobs SET state = 'completed' WHERE owner = 'user-a'")
    hourly = call("POST", "/jobs", body=EXPORT)
    assert (hourly.status, hourly.body["quota"]) == (429, "requestedJobsPerHour")
    assert 3500 <= int(hourly.headers["retry-after"]) <= 3600


def test_concurrent_requests_never_share_the_last_slot(settings):
    """Eight requests at once, each on a connection of its own (as eight API containers), for
    the last slot: one gets it."""
    from offload.db.pool import create_pool
    from offload.db.requested import record_requested_job
    from offload.db.status import JobIdentity
    from offload.quotas import QuotaExceeded
    from offload.requested_jobs import REQUESTED_JOB_NAMES, Export, export_ref

    async def scenario() -> list[bool]:
        pool = create_pool(settings.database_url, settings.database_schema, max_size=8)
        await pool.open(wait=True, timeout=10)

        async def one(n: int) -> bool:
            ref = export_ref("b", "user-a", Export(date(2026, 3, 1), date(2026, 3, 2)))
            identity = JobIdentity(job_id("export", ref), "export", settings.queue_name, ref)
            try:
                await record_requested_job(
                    pool,
                    identity,
                    3,
                    names=REQUESTED_JOB_NAMES,
                    in_flight_limit=1,
                    per_hour_limit=0,
                    tier="standard",
                )
            except QuotaExceeded:
                return False
            return True

        try:
            return await asyncio.gather(*(one(n) for n in range(8)))
        finally:
            await pool.close()

    assert sorted(asyncio.run(scenario())) == [False] * 7 + [True]


def test_the_worker_refuses_an_export_that_is_not_its_owners(settings, bucket, moto_endpoint):
    """A job in the queue is not trusted: an export whose key is outside its owner's exports
    (or names no valid period) fails for good without writing anything."""

    async def scenario() -> list[dict]:
        worker_settings = replace(settings, upload_bucket=bucket, s3_endpoint_url=moto_endpoint)
        refs = [
            JobRef(
                bucket,
                "processed/user-b/exports/2026-03-01_2026-03-02_00000000000000aa.csv",
                owner="user-a",
            ),
            JobRef(
                bucket,
                "processed/user-a/exports/2026-03-02_2026-03-01_00000000000000bb.csv",
                owner="user-a",
            ),
        ]
        queue = Queue(
            settings.queue_name, {"connection": _redis(settings), "prefix": settings.queue_prefix}
        )
        rows = []
        try:
            async with running_worker(worker_settings):
                for ref in refs:
                    await queue.add("export", ref.to_data(), {"jobId": job_id("export", ref)})
                for ref in refs:
                    rows.append(await wait_for_state(settings, job_id("export", ref), "failed"))
        finally:
            await queue.close()
        return rows

    rows = asyncio.run(scenario())
    assert [row["attempt"] for row in rows] == [1, 1]  # permanent: no retry
    assert "owner's exports" in rows[0]["error_message"]
    assert "period" in rows[1]["error_message"]


def _redis(settings: Settings) -> dict:
    from offload.redis_conn import settings_connection_options

    return settings_connection_options(settings)


@pytest.mark.unit
def test_the_reconciler_rebuilds_a_lost_requested_job_from_its_row():
    """The parameters are in the key: the row's bucket, key and owner give back the same job
    (same id, same parameters), as the reconciler rebuilds lost jobs."""
    from offload.reconcile import ref_for_job_row
    from offload.requested_jobs import Export, export_from_ref, export_ref

    export = Export(date(2026, 3, 1), date(2026, 3, 31))
    ref = export_ref("bkt", "user-a", export)
    row = {
        "id": job_id("export", ref),
        "name": "export",
        "bucket": ref.bucket,
        "key": ref.key,
        "owner": "user-a",
        "upload_id": None,
        "revision": None,
    }
    rebuilt = ref_for_job_row(row)
    assert rebuilt == ref
    assert export_from_ref(rebuilt) == export


def test_the_jobs_asked_for_are_listed_by_name(lambda_env, settings):
    """``GET /jobs?name=export``: the caller's exports only, not its upload steps nor another
    user's exports; a name that cannot be a job name is 400."""
    mine = call("POST", "/jobs", body=EXPORT).body["id"]
    call("POST", "/jobs", body=EXPORT, sub="user-b")
    step = JobRef("bkt", "uploads/user-a/u1/f.bin", etag="e", owner="user-a", upload_id="u1")

    async def add_step() -> None:
        async with producer(settings) as made:
            await made.enqueue("inspect", step)

    asyncio.run(add_step())
    assert len(call("GET", "/jobs").body["jobs"]) == 2
    listed = call("GET", "/jobs", query={"name": "export"}).body["jobs"]
    assert [job["id"] for job in listed] == [mine]
    assert call("GET", "/jobs", query={"name": "thumbnail"}).body["jobs"] == []
    for bad in ("Export", "x'--", "a" * 65, ""):
        refused = call("GET", "/jobs", query={"name": bad})
        assert (refused.status, refused.body.get("field")) == (400, "name"), bad
