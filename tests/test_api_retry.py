"""Retrying a failed job while something races it: a second retry, a worker, an outage, the
job leaving Redis. The claim in PostgreSQL decides, and the row never says ``queued`` for a job
the queue does not hold (offload.jobs_service.JobService.retry, StatusStore.retry_claim)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from bullmq import Job
from psycopg.conninfo import make_conninfo

from offload.jobs import JobRef
from offload.queue import open_queue
from tests.support.api_containers import api_containers, invoke_together
from tests.support.apigw import call, configure, event, run_jobs
from tests.support.harness import (
    job_events,
    job_row,
    producer,
    running_worker,
    wait_for,
    wait_for_state,
)
from tests.support.redis_acl import as_environment
from tests.support.tcpproxy import proxy_for, url_through


def ref(n: int, key: str | None = None) -> JobRef:
    return JobRef(
        bucket="bkt-retry",
        key=key or f"uploads/user-a/up{n:03d}/file.bin",
        etag=f'"{n:032x}"',
        owner="user-a",
        upload_id=f"up{n:03d}",
    )


async def settled(queue: Any, settings: Any, job_id: str) -> dict:
    """The row once the job is failed in the queue and the row says so for the same attempt:
    nothing is left in flight."""

    async def failed_everywhere() -> dict | None:
        if await queue.getJobState(job_id) != "failed":
            return None
        job = await queue.getJob(job_id)
        row = job_row(settings, job_id)
        return row if row["state"] == "failed" and row["attempt"] == job.attemptsMade else None

    return await wait_for(failed_everywhere, timeout_s=60)


def retry_events(settings: Any, job_id: str) -> list[dict]:
    return [e for e in job_events(settings, job_id) if e["message"] == "retry requested"]


@pytest.mark.slow
def test_a_double_clicked_retry_runs_the_job_once_more(lambda_env, settings):
    """Two retries of one failed job at once, from two containers released by a barrier: one
    200, one 409, one more run. The containers' bullmq makes the second caller of
    ``Job.retry`` wait until the job has run again (tests/support/slow_second_retry.py): the
    second click landing on a cold container. Before the claim, that request retried the job a
    second time. Several rounds, so that each container wins some.

    The retried run takes a second before it fails again: two clicks are "at once" while the
    first one's run is in flight, and on a loaded machine (the suite runs in parallel) one
    container can start its request a few hundred milliseconds after the other. A click after
    the job has failed again is a new retry, rightly accepted."""
    rounds = 12

    async def scenario() -> list[tuple]:
        outcomes = []
        async with producer(settings) as made, running_worker(settings):
            with api_containers(
                lambda_env, 2, handler="tests.support.slow_second_retry.handler"
            ) as containers:
                invoke_together(containers, [event("GET", "/jobs")] * 2)  # warm
                for n in range(rounds):
                    job_id = await made.enqueue(
                        "fail_slowly_when_retried", ref(n, key="1.0"), {"attempts": 1}
                    )
                    await settled(made.queue, settings, job_id)
                    retry = event("POST", f"/jobs/{job_id}/retry")
                    answers = await asyncio.to_thread(invoke_together, containers, [retry] * 2)
                    row = await settled(made.queue, settings, job_id)
                    runs = [e for e in job_events(settings, job_id) if e["state"] == "active"]
                    outcomes.append((job_id, answers, row, runs))
        return outcomes

    for job_id, answers, row, runs in asyncio.run(scenario()):
        assert sorted(a.status for a in answers) == [200, 409], [a.body for a in answers]
        refused = next(a for a in answers if a.status == 409)
        assert refused.headers["content-type"] == "application/json"
        assert "only a failed job can be retried" in refused.message
        assert (row["attempt"], len(runs)) == (2, 2), job_id  # the first run and one more
        assert len(retry_events(settings, job_id)) == 1


def test_a_worker_that_takes_the_retried_job_at_once_keeps_its_state(
    lambda_env, settings, monkeypatch
):
    """The worker takes the retried job and writes ``active`` before the API has written its
    transition (here the API waits, after bullmq accepted the retry, until the worker's write
    is on its way). The worker's state stands: the retry's ``queued`` comes first, the worker's
    attempt 2 after it, and nothing sets the row back."""
    app = f"w-{settings.database_schema}"  # the worker's sessions, found in pg_stat_activity
    worker_settings = replace(
        settings, database_url=make_conninfo(settings.database_url, application_name=app)
    )
    (job_id,) = asyncio.run(run_jobs(settings, [("fail_until", ref(1, key="2"), {"attempts": 1})]))
    assert job_row(settings, job_id)["state"] == "failed"

    def worker_writing() -> bool:
        """The worker's ``active`` for attempt 2 landed, or waits for our row lock."""
        if job_row(settings, job_id)["attempt"] == 2:
            return True
        with psycopg.connect(settings.database_url) as conn:
            waiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = %s AND wait_event_type = 'Lock'",
                (app,),
            ).fetchone()[0]
        return waiting > 0

    bullmq_retry = Job.retry

    async def retry_then_let_the_worker_in(self: Job, state: str = "failed", opts=None) -> None:
        await bullmq_retry(self, state, opts or {})

        async def taken() -> bool:
            return await self.queue.getJobState(job_id) == "active" and worker_writing()

        await wait_for(taken, timeout_s=30)

    monkeypatch.setattr(Job, "retry", retry_then_let_the_worker_in)

    async def scenario() -> Any:
        async with running_worker(worker_settings):
            answer = await asyncio.to_thread(call, "POST", f"/jobs/{job_id}/retry")
            await wait_for_state(settings, job_id, "completed", timeout_s=60)
        return answer

    answer = asyncio.run(scenario())
    assert answer.status == 200, answer.body
    row = job_row(settings, job_id)
    assert (row["state"], row["attempt"]) == ("completed", 2) and row["worker_id"]
    history = [(e["state"], e["attempt"]) for e in job_events(settings, job_id)]
    after_failure = history[history.index(("failed", 1)) + 1 :]
    assert after_failure == [("queued", 1), ("active", 2), ("completed", 2)]


def test_postgres_lost_before_the_claim_commits_leaves_the_row_failed(
    lambda_env, settings, monkeypatch
):
    """bullmq accepted the retry, then PostgreSQL went away before the claim committed: 503,
    and the row is ``failed`` as before, error and all (never claimed without a retry). The job
    does run again, once: its worker's ``active`` corrects the row, and a retry meanwhile is
    refused by the queue (409), not run a second time."""
    proxy = proxy_for(settings.database_url, 5432)
    configure(monkeypatch, DATABASE_URL=url_through(settings.database_url, proxy.port))
    (job_id,) = asyncio.run(run_jobs(settings, [("fail_always", ref(1), {"attempts": 1})]))
    before = job_row(settings, job_id)
    bullmq_retry = Job.retry
    # Without the claim's transaction the API retried its write until PostgreSQL came back:
    # bound that hang, so that the old behaviour fails this test instead of hanging it.
    give_up = threading.Timer(20, proxy.restore)

    async def retry_then_lose_postgres(self: Job, state: str = "failed", opts=None) -> None:
        await bullmq_retry(self, state, opts or {})
        proxy.cut()
        give_up.start()

    async def run_it() -> dict:
        async with producer(settings) as made, running_worker(settings):
            return await settled(made.queue, settings, job_id)

    try:
        monkeypatch.setattr(Job, "retry", retry_then_lose_postgres)
        answer = call("POST", f"/jobs/{job_id}/retry")
        give_up.cancel()
        assert answer.status == 503, answer.body
        assert answer.message == "service temporarily unavailable, try again"
        row = job_row(settings, job_id)
        assert (row["state"], row["attempt"]) == ("failed", 1)
        assert row["error_message"] == before["error_message"] and row["finished_at"]
        assert retry_events(settings, job_id) == []

        proxy.restore()
        monkeypatch.setattr(Job, "retry", bullmq_retry)
        again = call("POST", f"/jobs/{job_id}/retry")
        assert again.status == 409 and "not failed in the queue" in again.message, again.body
        row = asyncio.run(run_it())
    finally:
        give_up.cancel()
        proxy.stop()
    assert row["attempt"] == 2
    runs = [e["attempt"] for e in job_events(settings, job_id) if e["state"] == "active"]
    assert runs == [1, 2]


def test_a_job_gone_from_redis_after_the_claim_is_409_and_the_row_is_untouched(
    lambda_env, settings, monkeypatch
):
    """The job leaves Redis between the claim and bullmq's retry (removed, or lost in a
    failover): bullmq refuses, the claim rolls back, and the row is the failed row it was,
    error included, with no ``queued`` in its history."""
    (job_id,) = asyncio.run(run_jobs(settings, [("fail_always", ref(1), {"attempts": 1})]))
    before = job_row(settings, job_id)
    bullmq_retry = Job.retry

    async def lose(jid: str) -> None:  # as a failover would, not as the API's own user
        queue = open_queue(as_environment(settings))
        try:
            await queue.remove(jid)
        finally:
            await queue.close()

    async def vanish_then_retry(self: Job, state: str = "failed", opts=None) -> None:
        await lose(self.id)
        await bullmq_retry(self, state, opts or {})

    monkeypatch.setattr(Job, "retry", vanish_then_retry)
    answer = call("POST", f"/jobs/{job_id}/retry")
    assert answer.status == 409 and "no longer in the queue" in answer.message, answer.body
    after = job_row(settings, job_id)
    assert after == before
    assert retry_events(settings, job_id) == []
