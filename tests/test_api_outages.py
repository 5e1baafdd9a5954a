"""The API when what it depends on fails: PostgreSQL out of reach (503, and back to 200 as
soon as it is back). Every answer is JSON."""

from __future__ import annotations

import time

from tests.support.apigw import ApiResponse, call, configure
from tests.support.tcpproxy import proxy_for, url_through

# psycopg_pool used to retry a lost connection on a timer that doubles (1, 2, 4, 8, 16 s, ...):
# after 18 s its next try is at least 10 s away, which any request after the outage waited for.
OUTAGE_S = 18.0


def unavailable(answer: ApiResponse) -> None:
    assert answer.status == 503, (answer.status, answer.body)
    assert answer.headers["content-type"] == "application/json"
    assert answer.body == {"message": "service temporarily unavailable, try again"}


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
