"""Jobs that bullmq moves without calling the processor (the stall limit, retries and promotions
made from outside, a crash loop): the status row must follow them.

bullmq fails a job that stalled more than ``maxStalledCount`` times through a deferred failure
(the stalled check marks the job, the next worker to fetch it fails it without running it), and
a job retried from outside (Node BullMQ, Bull Board) may start again at attempt 1. The worker
process is a real ``python -m fargate_worker`` where a crash is part of the scenario.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from offload.jobs import JobRef
from offload.settings import Settings
from tests.support import apigw
from tests.support.harness import (
    add,
    job_events,
    job_row,
    producer,
    queue_job_in_state,
    running_worker,
    spawn_worker,
    wait_for,
    wait_for_state,
)

STALL_REASON = "job stalled more than allowable limit"


def _kill(worker: subprocess.Popen) -> None:
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(10)


async def _active_at(settings: Settings, job_id: str, attempt: int, timeout_s: float) -> None:
    await wait_for(
        lambda: (
            (row := job_row(settings, job_id))
            and (row["state"], row["attempt"])
            == (
                "active",
                attempt,
            )
        ),
        timeout_s=timeout_s,
    )


@pytest.mark.slow
def test_a_job_stalled_past_the_limit_is_failed_in_postgres_too_and_can_run_again(
    lambda_env, settings, tmp_path
):
    settings = replace(
        settings, lock_duration_ms=1000, stalled_interval_ms=1000, max_stalled_count=1
    )
    # slow on attempts 1, 2 and 4 (each killed), quick from attempt 5; owned by the API's caller
    ref = JobRef(bucket="b", key="5", owner="user-a")

    async def crash(job_id: str, attempt: int, name: str) -> None:
        worker = spawn_worker(settings, tmp_path / f"worker-{name}.log")
        try:
            await _active_at(settings, job_id, attempt, timeout_s=60)
        finally:
            _kill(worker)

    async def scenario():
        async with producer(settings) as prod:
            job_id = await prod.enqueue("slow_until", ref)
            await crash(job_id, 1, "1")  # two crashes during the same job
            await crash(job_id, 2, "2")
            worker = spawn_worker(settings, tmp_path / "worker-3.log")
            try:
                failed = await wait_for(
                    lambda: queue_job_in_state(prod.queue, job_id, "failed"), timeout_s=60
                )
                row = await wait_for_state(settings, job_id, "failed", timeout_s=30)
            finally:
                _kill(worker)
            retried = await asyncio.to_thread(apigw.call, "POST", f"/jobs/{job_id}/retry")
            # The retry starts with a fresh stall allowance: one crash does not fail it again.
            await crash(job_id, 4, "4")
            worker = spawn_worker(settings, tmp_path / "worker-5.log")
            try:
                done = await wait_for_state(settings, job_id, "completed", timeout_s=60)
            finally:
                _kill(worker)
            return failed, row, retried, done

    failed, row, retried, done = asyncio.run(scenario())
    assert failed.failedReason == STALL_REASON
    assert row["error_message"] == STALL_REASON
    assert row["finished_at"] is not None
    assert row["attempt"] == 3  # bullmq counted the start that found the deferred failure
    assert retried.status == 200, retried.body
    assert done["attempt"] == 5 and done["result"] == {"attempt": 5}
    states = [event["state"] for event in job_events(settings, row["id"])]
    assert states == [
        *["queued", "active", "active", "failed"],
        *["queued", "active", "active", "completed"],
    ]


def test_a_job_retried_from_outside_with_its_attempts_reset_is_followed(settings):
    """Bull Board / Node BullMQ may retry a failed job with ``resetAttemptsMade`` and
    ``resetAttemptsStarted``: its next run is attempt 1 again, below the failed row's."""
    settings = replace(settings, default_attempts=2, default_backoff_ms=50)

    async def scenario():
        async with producer(settings) as prod:
            job_id = await add(prod, "fail_until", "3")  # fails attempts 1 and 2, then succeeds
            async with running_worker(settings):
                failed = await wait_for_state(settings, job_id, "failed")
                job = await wait_for(lambda: queue_job_in_state(prod.queue, job_id, "failed"))
                await job.retry("failed", {"resetAttemptsMade": True, "resetAttemptsStarted": True})
                # attempt 1 and 2 fail again: the row must follow them, not stay at the old run
                again = await wait_for(
                    lambda: (
                        (row := job_row(settings, job_id))
                        and row["state"] == "failed"
                        and row["finished_at"] > failed["finished_at"]
                        and row
                    )
                )
            return failed, again

    failed, again = asyncio.run(scenario())
    assert failed["attempt"] == 2
    assert again["attempt"] == 2
    assert "attempt 2" in again["error_message"]
    states = [event["state"] for event in job_events(settings, again["id"])]
    run = ["active", "retrying", "active", "failed"]
    assert states == ["queued", *run, *run]  # the second run's attempt 1 is recorded too


@dataclass
class CrashLoop:
    workers: int = 0
    longest_start_s: float = 0.0  # spawn to "worker started" in its log


def _crash_loop(
    settings: Settings, log_dir: Path, lives_s: float, stop: threading.Event
) -> CrashLoop:
    """Workers that each live ``lives_s`` once started and then die by SIGKILL, one after
    another until ``stop`` is set: a crash loop in which no worker lives a full stalled interval.
    Their lives count from the start line in their log, not from the spawn, so that a loaded
    machine's slow start-ups do not kill them before they run anything."""
    loop = CrashLoop()
    while not stop.is_set():
        loop.workers += 1
        log_path = log_dir / f"churn-{loop.workers}.log"
        spawned = time.monotonic()
        worker = spawn_worker(settings, log_path)
        try:
            while not stop.is_set() and worker.poll() is None:
                if log_path.exists() and "worker started" in log_path.read_text(errors="replace"):
                    break
                stop.wait(0.05)
            loop.longest_start_s = max(loop.longest_start_s, time.monotonic() - spawned)
            stop.wait(lives_s)
        finally:
            _kill(worker)
    return loop


@pytest.mark.slow
def test_abandoned_job_is_recovered_during_a_crash_loop(settings, tmp_path):
    """bullmq-py's first stalled check runs one stalled interval after the worker starts (Node
    checks at start): while workers died sooner than that, an abandoned job stayed active."""
    lock_s, interval_s = 1, 6
    settings = replace(
        settings,
        lock_duration_ms=lock_s * 1000,
        stalled_interval_ms=interval_s * 1000,
        max_stalled_count=5,
    )

    async def scenario():
        async with producer(settings) as prod:
            job_id = await add(prod, "ticker", "0.5", bucket=str(tmp_path / "ticks.log"))
            first = spawn_worker(settings, tmp_path / "first.log")
            try:
                await _active_at(settings, job_id, 1, timeout_s=60)
                await wait_for(lambda: (tmp_path / "ticks.log").exists(), timeout_s=30)
            finally:
                _kill(first)
            abandoned_at = time.monotonic()
            # Each worker lives 4 s, less than the stalled interval.
            stop = threading.Event()
            churn = asyncio.ensure_future(
                asyncio.to_thread(_crash_loop, settings, tmp_path, 4.0, stop)
            )
            try:
                row = await wait_for_state(settings, job_id, "completed", timeout_s=60)
                recovered_after = time.monotonic() - abandoned_at
            finally:
                stop.set()
                loop = await churn
            return row, recovered_after, loop

    row, recovered_after, loop = asyncio.run(scenario())
    assert row["attempt"] >= 2
    # Recovery needs the lock to expire and two checks (one marks, the next moves), checks being
    # at most one per stalled interval across workers and made as a worker starts: each can
    # wait for the next start-up, then the job's run (10 s of slack for that and the rest).
    # Without a check at start: not within the 60 s.
    bound_s = lock_s + 2 * interval_s + 2 * loop.longest_start_s + 10
    assert recovered_after < bound_s, (recovered_after, bound_s, loop)


def test_a_retry_promoted_from_outside_is_followed(settings):
    """Bull Board's "promote" moves a job waiting out its backoff straight to the wait list."""
    settings = replace(settings, default_attempts=3, default_backoff_ms=120_000)

    async def scenario():
        async with producer(settings) as prod, running_worker(settings):
            job_id = await add(prod, "fail_until", "2")  # attempt 1 fails, attempt 2 succeeds
            await wait_for_state(settings, job_id, "retrying")
            job = await wait_for(lambda: queue_job_in_state(prod.queue, job_id, "delayed"))
            await job.promote()
            return await wait_for_state(settings, job_id, "completed", timeout_s=30)

    row = asyncio.run(scenario())
    assert (row["attempt"], row["result"]) == (2, {"attempt": 2})
