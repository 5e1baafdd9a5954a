"""The API when what it depends on fails: PostgreSQL or Redis out of reach (503, and back to
200 as soon as they are back), and an error nobody expected (500). Every answer is JSON."""

from __future__ import annotations

import asyncio
import io
import json
import time

import pytest

from offload.jobs import JobRef
from tests.support.apigw import ApiResponse, call, configure, run_jobs
from tests.support.harness import job_row
from tests.support.servers import unique_name
from tests.support.tcpproxy import proxy_for, url_through

# psycopg_pool used to retry a lost connection on a timer that doubles (1, 2, 4, 8, 16 s, ...):
# after 18 s its next try is at least 10 s away, which any request after the outage waited for.
OUTAGE_S = 18.0


def unavailable(answer: ApiResponse) -> None:
    assert answer.status == 503, (answer.status, answer.body)
    assert answer.headers["content-type"] == "application/json"
    assert answer.body == {"message": "service temporarily unavailable, try again"}


@pytest.mark.slow
def test_the_first_request_after_a_postgres_outage_succeeds(lambda_env, settings, monkeypatch):
    """A warm container loses PostgreSQL for a while: every request meanwhile is a prompt 503
    (the pool waits 5 s, far from API Gateway's 29 s), and the very first request once
    PostgreSQL is back is served."""
    proxy = proxy_for(settings.database_url, 5432)
    configure(monkeypatch, DATABASE_URL=url_through(settings.database_url, proxy.port))
    during: list[tuple[ApiResponse, float]] = []
    try:
        assert call("GET", "/jobs").status == 200
        proxy.cut()
        cut_at = time.monotonic()
        while time.monotonic() - cut_at < OUTAGE_S:
            started = time.monotonic()
            during.append((call("GET", "/jobs"), time.monotonic() - started))
        proxy.restore()
        first = call("GET", "/jobs")
    finally:
        proxy.stop()
    assert len(during) >= 3
    for answer, took in during:
        unavailable(answer)
        assert took < 15, took
    assert first.status == 200, first.body


def test_redis_out_of_reach_is_503_and_changes_nothing(lambda_env, settings, monkeypatch):
    """A warm container loses Redis (the proxy in between is cut) while retrying a failed job:
    503, the row is the failed row it was (the claim rolled back), and once Redis is back the
    same retry goes through."""
    proxy = proxy_for(settings.redis_url, 6379)
    configure(monkeypatch, REDIS_URL=url_through(settings.redis_url, proxy.port))
    refs = [
        JobRef(bucket="bkt-out", key=f"uploads/user-a/up{n}/f.bin", owner="user-a") for n in (1, 2)
    ]
    first, second = asyncio.run(
        run_jobs(settings, [("fail_always", ref, {"attempts": 1}) for ref in refs])
    )
    before = job_row(settings, second)
    try:
        assert call("POST", f"/jobs/{first}/retry").status == 200  # the queue is connected
        proxy.cut()
        started = time.monotonic()
        answer = call("POST", f"/jobs/{second}/retry")
        took = time.monotonic() - started
        after = job_row(settings, second)
        proxy.restore()
        again = call("POST", f"/jobs/{second}/retry")
    finally:
        proxy.stop()
    unavailable(answer)
    assert took < 20, took
    assert after == before
    assert again.status == 200 and again.body["state"] == "queued", again.body


def test_an_unexpected_error_is_a_json_500_that_tells_nothing(lambda_env, monkeypatch):
    """A deployment whose migrations never ran for its schema: PostgreSQL answers, but with an
    error no request can cause or cure (no such table). That is a bug to fix, not an outage to
    wait out: 500, with the details in the log and none in the answer."""
    from lambdas import api

    stream = io.StringIO()
    monkeypatch.setattr(api.logger.registered_handler, "stream", stream)
    configure(monkeypatch, OFFLOAD_DB_SCHEMA=unique_name("never_migrated"))
    answer = call("GET", "/jobs")
    assert answer.status == 500, answer.body
    assert answer.headers["content-type"] == "application/json"
    assert answer.body == {"message": "internal error"}
    logged = [json.loads(line) for line in stream.getvalue().splitlines() if line]
    error = next(line for line in logged if line.get("message") == "unhandled error")
    assert "UndefinedTable" in error["exception"] and "jobs" in error["exception"]
