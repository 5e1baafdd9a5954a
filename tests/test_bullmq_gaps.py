"""Each workaround for a measured bullmq-py 3.4.x gap (DESIGN.md), tested so it would fail
without the workaround."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from fargate_worker.worker import worker_options
from offload.redis_conn import connection_options
from tests.support.harness import add, job_events, producer, running_worker, wait_for_state


def test_connection_has_no_socket_timeout_and_supports_tls():
    plain = connection_options("redis://:secret@cache.local:6380/2")
    assert plain["socket_timeout"] is None  # gap 1: redis-py 8 defaults to 5 s
    assert plain["socket_keepalive"] is True and plain["health_check_interval"] > 0
    assert (plain["host"], plain["port"], plain["db"], plain["password"]) == (
        "cache.local",
        6380,
        2,
        "secret",
    )
    assert "ssl" not in plain
    tls = connection_options("rediss://user@cache.local", auth_token="tok")
    assert tls["ssl"] is True and tls["ssl_cert_reqs"] == "required"
    assert tls["username"] == "user" and tls["password"] == "tok"


def test_idle_worker_picks_up_delayed_job_on_time(settings):
    # drainDelay 5 s (the production default) and a 7 s delay: the worker sits in blocking
    # waits longer than redis-py's default socket timeout before the job is due.
    settings = replace(settings, drain_delay_s=5)

    async def scenario():
        async with producer(settings) as prod, running_worker(settings):
            await asyncio.sleep(6)  # idle through one full blocking wait first
            added = time.time()
            job_id = await add(prod, "noop", "delayed", delay=7000)
            row = await wait_for_state(settings, job_id, "completed", timeout_s=30)
            return added, row

    added, row = asyncio.run(scenario())
    lateness = row["started_at"].timestamp() - (added + 7)
    assert -0.05 <= lateness <= 1.0, lateness


def test_backoff_of_five_seconds_retries_on_time(settings):
    settings = replace(settings, drain_delay_s=5, default_backoff_ms=5000, default_attempts=2)

    async def scenario():
        async with producer(settings) as prod, running_worker(settings):
            job_id = await add(prod, "fail_until", "2")
            await wait_for_state(settings, job_id, "completed", timeout_s=30)
            return job_id

    events = job_events(settings, asyncio.run(scenario()))
    failed_at = next(e["at"] for e in events if e["state"] == "retrying")
    retried_at = [e["at"] for e in events if e["state"] == "active"][1]
    gap = (retried_at - failed_at).total_seconds()
    assert 4.95 <= gap <= 6.0, gap


def test_sub_second_delays_are_honoured(settings):
    settings = replace(settings, drain_delay_s=5)

    async def scenario():
        async with producer(settings) as prod, running_worker(settings):
            await asyncio.sleep(0.5)
            lateness = []
            for index, delay_ms in enumerate((300, 600)):
                added = time.time()
                job_id = await add(prod, "noop", f"d{index}", delay=delay_ms)
                row = await wait_for_state(settings, job_id, "completed")
                lateness.append(row["started_at"].timestamp() - added - delay_ms / 1000)
            return lateness

    for late in asyncio.run(scenario()):
        # without the version check the wait rounds up to a whole second (late by 0.4-0.7 s)
        assert -0.05 <= late <= 0.25, late


def test_rate_limiter_lets_the_configured_rate_through(settings):
    settings = replace(
        settings, limiter_max=2, limiter_duration_ms=1000, concurrency=2, drain_delay_s=5
    )
    assert worker_options(settings)["limiter"] == {"max": 2, "duration": 1000}

    async def scenario():
        async with producer(settings) as prod:
            ids = [await add(prod, "noop", f"r{i}") for i in range(12)]
            async with running_worker(settings):
                started = time.monotonic()
                await asyncio.sleep(4.0)
                counts = await prod.queue.getJobCounts("completed")
                elapsed = time.monotonic() - started
            return ids, counts["completed"], elapsed

    _, completed, elapsed = asyncio.run(scenario())
    # 2 per second over ~4 s: 8 (the first window starts at once); over-throttling gives <= 4
    assert 7 <= completed <= 10, (completed, elapsed)
