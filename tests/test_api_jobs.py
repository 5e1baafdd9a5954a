"""Job routes: the caller's jobs from PostgreSQL (newest first, keyset pagination), one job,
and retrying a failed job through bullmq."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.rows import dict_row

from offload.jobs import JobRef
from offload.pages import Cursor, encode_cursor
from offload.queue import producer
from tests.support.apigw import call, run_jobs
from tests.support.harness import job_events, job_row
from tests.support.redis_acl import as_environment


def ref(owner: str, n: int) -> JobRef:
    return JobRef(
        bucket="bkt-jobs",
        key=f"uploads/{owner}/up{n:03d}/file.bin",
        etag=f'"{n:032x}"',
        owner=owner,
        upload_id=f"up{n:03d}",
    )


def sql(settings, statement: str, params=()) -> list[dict]:
    with psycopg.connect(
        settings.database_url,
        options=f"-c search_path={settings.database_schema}",
        autocommit=True,
    ) as conn:
        conn.row_factory = dict_row
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


async def enqueue(settings, jobs: list[tuple[str, JobRef]]) -> list[str]:
    async with producer(settings) as made:
        return [await made.enqueue(name, job_ref) for name, job_ref in jobs]


@pytest.fixture
def seeded(lambda_env, settings) -> dict[str, list[str]]:
    """25 jobs of user-a, 6 of user-b, with creation times that tie in threes (the cursor
    must order ties by id and never repeat or skip one)."""
    a = asyncio.run(enqueue(settings, [("noop", ref("user-a", n)) for n in range(25)]))
    b = asyncio.run(enqueue(settings, [("noop", ref("user-b", n)) for n in range(6)]))
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for index, job_id in enumerate(a + b):
        at = base + timedelta(seconds=index // 3, microseconds=7)
        sql(settings, "UPDATE jobs SET created_at = %s WHERE id = %s", (at, job_id))
    return {"user-a": a, "user-b": b}


def expected_order(settings, owner: str) -> list[str]:
    rows = sql(
        settings,
        "SELECT id FROM jobs WHERE owner = %s ORDER BY created_at DESC, id ASC",
        (owner,),
    )
    return [row["id"] for row in rows]


def walk(sub: str, limit: int | None) -> list[list[dict]]:
    pages, cursor = [], None
    while True:
        query = {}
        if limit is not None:
            query["limit"] = str(limit)
        if cursor:
            query["cursor"] = cursor
        page = call("GET", "/jobs", sub=sub, query=query or None)
        assert page.status == 200, page.body
        pages.append(page.body["jobs"])
        cursor = page.body["nextCursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50


def test_pagination_returns_each_job_of_the_caller_once_newest_first(settings, seeded):
    pages = walk("user-a", 7)
    assert [len(page) for page in pages] == [7, 7, 7, 4]
    ids = [job["id"] for page in pages for job in page]
    assert ids == expected_order(settings, "user-a")
    assert sorted(ids) == sorted(seeded["user-a"])
    created = [job["createdAt"] for page in pages for job in page]
    assert created == sorted(created, reverse=True)

    default = walk("user-a", None)
    assert [len(page) for page in default] == [20, 5]
    assert [job["id"] for page in default for job in page] == ids

    b_ids = [job["id"] for page in walk("user-b", 100) for job in page]
    assert b_ids == expected_order(settings, "user-b") and len(b_ids) == 6
    assert not set(b_ids) & set(ids)
    assert walk("user-c", 5) == [[]]


def test_jobs_added_while_paging_are_neither_repeated_nor_skipped(settings, seeded):
    first = call("GET", "/jobs", query={"limit": "10"})
    newer = asyncio.run(enqueue(settings, [("noop", ref("user-a", 99))]))
    rest = walk_from(first.body["nextCursor"])
    seen = [job["id"] for job in first.body["jobs"]] + rest
    assert len(seen) == len(set(seen)) == 25
    assert newer[0] not in seen  # newer than the first page: the next walk starts with it
    assert call("GET", "/jobs", query={"limit": "1"}).body["jobs"][0]["id"] == newer[0]


def walk_from(cursor: str) -> list[str]:
    ids = []
    while cursor:
        page = call("GET", "/jobs", query={"limit": "4", "cursor": cursor})
        ids += [job["id"] for job in page.body["jobs"]]
        cursor = page.body["nextCursor"]
    return ids


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "1.5", "", "99999"])
def test_limit_must_be_1_to_100(lambda_env, limit):
    page = call("GET", "/jobs", query={"limit": limit})
    assert page.status == 400 and page.body["field"] == "limit"


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor",
        "%%%",
        base64.urlsafe_b64encode(b'{"t": "x", "i": "a"}').decode(),
        base64.urlsafe_b64encode(b'{"t": 1}').decode(),
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(b'{"t": 1e400, "i": "a"}').decode(),
        base64.urlsafe_b64encode(b'{"t": 99999999999999999999999, "i": "a"}').decode(),
        "a" * 600,
    ],
)
def test_cursor_must_be_one_the_api_handed_out(lambda_env, cursor):
    page = call("GET", "/jobs", query={"cursor": cursor})
    assert page.status == 400 and page.body["field"] == "cursor", page.body


def test_a_forged_cursor_never_reaches_another_users_jobs(settings, seeded):
    """The cursor is only a position: whatever it holds, the owner filter stays."""
    b_newest = expected_order(settings, "user-b")[0]
    row = sql(settings, "SELECT created_at FROM jobs WHERE id = %s", (b_newest,))[0]
    forged = encode_cursor(Cursor(row["created_at"] + timedelta(days=1), "any-job-id"))
    ids = [job["id"] for job in call("GET", "/jobs", query={"cursor": forged}).body["jobs"]]
    assert ids and not set(ids) & set(seeded["user-b"])


def test_get_job_shows_state_and_error_but_not_the_stack(lambda_env, settings):
    failed, done = asyncio.run(
        run_jobs(
            settings,
            [("fail_always", ref("user-a", 1), {"attempts": 1}), ("noop", ref("user-a", 2), {})],
        )
    )
    view = call("GET", f"/jobs/{failed}")
    assert view.status == 200, view.body
    body = view.body
    assert body["id"] == failed and body["name"] == "fail_always"
    assert body["state"] == "failed" and body["uploadId"] == "up001"
    assert body["attempts"] == 1 and body["maxAttempts"] == 1
    assert "poison job" in body["error"]
    assert body["createdAt"] and body["startedAt"] and body["finishedAt"] and body["updatedAt"]
    assert set(body) == {
        "id", "name", "uploadId", "filename", "state", "progress", "attempts", "maxAttempts",
        "result", "error", "links", "outputsArchived", "createdAt", "startedAt", "finishedAt",
        "updatedAt", "superseded",
    }  # fmt: skip
    assert job_row(settings, failed)["error_stack"]  # stored, but never shown
    assert "Traceback" not in str(body) and "error_stack" not in str(body)

    completed = call("GET", f"/jobs/{done}").body
    assert completed["state"] == "completed" and completed["result"] == {"ok": True}
    assert completed["progress"] == 100 and completed["error"] is None
    assert call("GET", f"/jobs/{failed}x").status == 404


def test_retry_of_a_failed_job_puts_it_back_in_the_queue(lambda_env, settings):
    (job_id,) = asyncio.run(
        run_jobs(settings, [("fail_always", ref("user-a", 1), {"attempts": 1})])
    )
    assert job_row(settings, job_id)["state"] == "failed"

    retried = call("POST", f"/jobs/{job_id}/retry")
    assert retried.status == 200, retried.body
    assert retried.body["state"] == "queued" and retried.body["error"] is None
    row = job_row(settings, job_id)
    assert row["state"] == "queued" and row["attempt"] == 1
    assert row["error_message"] is None and row["finished_at"] is None
    last = job_events(settings, job_id)[-1]
    assert (last["state"], last["attempt"], last["message"]) == ("queued", 1, "retry requested")

    async def queue_state() -> str:
        async with producer(settings) as made:
            job = await made.queue.getJob(job_id)
            return await job.getState()

    assert asyncio.run(queue_state()) == "waiting"
    assert call("POST", f"/jobs/{job_id}/retry").status == 409  # queued now: nothing to retry

    # A worker takes the retried job: its writes are not blocked by the requeued row
    # (one more attempt, bullmq semantics), and it ends failed again at attempt 2.

    async def run_worker_until_failed() -> None:
        from tests.support.harness import running_worker, wait_for_state

        async with running_worker(settings):
            await wait_for_state(settings, job_id, "failed", timeout_s=30)

    asyncio.run(run_worker_until_failed())
    row = job_row(settings, job_id)
    assert (row["state"], row["attempt"]) == ("failed", 2)
    assert call("GET", f"/jobs/{job_id}").body["attempts"] == 2


def test_retry_of_a_job_that_is_not_failed_is_409(lambda_env, settings):
    (done,) = asyncio.run(run_jobs(settings, [("noop", ref("user-a", 1), {})]))
    (queued,) = asyncio.run(enqueue(settings, [("noop", ref("user-a", 2))]))
    for job_id, state in ((done, "completed"), (queued, "queued")):
        answer = call("POST", f"/jobs/{job_id}/retry")
        assert answer.status == 409 and state in answer.message, answer.body
        assert job_row(settings, job_id)["state"] == state


def test_retry_when_the_queue_disagrees_is_409_and_changes_nothing(lambda_env, settings):
    """Row says failed but bullmq has the job waiting (e.g. recovered after a crash), or the
    job is gone from Redis (past retention): nothing moves."""
    (waiting,) = asyncio.run(enqueue(settings, [("noop", ref("user-a", 1))]))
    sql(settings, "UPDATE jobs SET state = 'failed' WHERE id = %s", (waiting,))
    answer = call("POST", f"/jobs/{waiting}/retry")
    assert answer.status == 409 and "not failed in the queue" in answer.message
    assert job_row(settings, waiting)["state"] == "failed"

    (gone,) = asyncio.run(run_jobs(settings, [("fail_always", ref("user-a", 2), {"attempts": 1})]))

    async def remove() -> None:
        async with producer(as_environment(settings)) as made:
            await (await made.queue.getJob(gone)).remove()

    asyncio.run(remove())
    answer = call("POST", f"/jobs/{gone}/retry")
    assert answer.status == 409 and "no longer in the queue" in answer.message
    assert job_row(settings, gone)["state"] == "failed"


def test_no_links_to_outputs_the_lifecycle_rule_may_have_archived(
    lambda_env, settings, monkeypatch
):
    """Archived objects answer a GET with InvalidObjectState: past the archive age the job
    says so instead of handing out links that cannot work."""
    from lambdas import runtime

    monkeypatch.setenv("OFFLOAD_PROCESSED_ARCHIVE_AFTER_DAYS", "90")
    runtime.reset()
    (job_id,) = asyncio.run(run_jobs(settings, [("noop", ref("user-a", 1), {})]))
    manifest = '{"manifest_key": "processed/user-a/up001/manifest.json"}'

    def finished_days_ago(days: int) -> dict:
        sql(
            settings,
            "UPDATE jobs SET result = %s::jsonb, finished_at = now() - %s * interval '1 day'"
            " WHERE id = %s",
            (manifest, days, job_id),
        )
        return call("GET", f"/jobs/{job_id}").body

    recent = finished_days_ago(89)
    assert [link["name"] for link in recent["links"]] == ["manifest.json"]
    assert recent["outputsArchived"] is False
    old = finished_days_ago(91)
    assert old["links"] == [] and old["outputsArchived"] is True
    assert old["result"] == {"manifest_key": "processed/user-a/up001/manifest.json"}
