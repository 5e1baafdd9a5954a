"""Failure modes across processes: SIGKILL, SIGTERM, PostgreSQL outages."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import psutil

from tests.support.harness import (
    add,
    job_events,
    job_row,
    producer,
    running_worker,
    spawn_worker,
    wait_for,
    wait_for_state,
)
from tests.support.tcpproxy import proxy_for, url_through


def _all_gone(processes: list[psutil.Process]) -> bool:
    return not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_sigkilled_worker_leaves_no_orphans_and_job_completes_once(settings, tmp_path):
    settings = replace(settings, lock_duration_ms=2000, stalled_interval_ms=1000)
    ticks = tmp_path / "ticks.log"

    async def scenario():
        async with producer(settings) as prod:
            job_id = await add(prod, "ticker", "3", bucket=str(ticks))
            worker_a = spawn_worker(settings, tmp_path / "worker-a.log")
            try:
                await wait_for(lambda: len(_lines(ticks)) >= 3, timeout_s=30)
                children = psutil.Process(worker_a.pid).children(recursive=True)
                assert children, "the worker runs jobs in child processes"
                os.kill(worker_a.pid, signal.SIGKILL)
                worker_a.wait(5)
            finally:
                if worker_a.poll() is None:
                    worker_a.kill()
            killed_at = time.time()
            await wait_for(lambda: _all_gone(children), timeout_s=5)
            first_attempt_pid = _lines(ticks)[0].split()[0]
            await asyncio.sleep(1.0)
            # no tick from the first attempt's child after its worker died (+ one in flight)
            late = [
                line
                for line in _lines(ticks)
                if line.split()[0] == first_attempt_pid and float(line.split()[2]) > killed_at + 0.2
            ]
            assert late == []
            async with running_worker(settings):
                row = await wait_for_state(settings, job_id, "completed", timeout_s=30)
            return row

    row = asyncio.run(scenario())
    assert row["attempt"] == 2
    states = [event["state"] for event in job_events(settings, row["id"])]
    assert states == ["queued", "active", "active", "completed"]
    assert states.count("completed") == 1
    attempts = {line.split()[1] for line in _lines(ticks)}
    assert attempts == {"1", "2"}


def test_sigterm_finishes_running_job_takes_no_new_one_and_exits_zero(settings, tmp_path):
    settings = replace(settings, concurrency=1, shutdown_grace_s=30)

    async def scenario():
        async with producer(settings) as prod:
            running = await add(prod, "sleep", "2")
            worker = spawn_worker(settings, tmp_path / "worker.log")
            try:
                await wait_for_state(settings, running, "active", timeout_s=30)
                worker.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.2)
                later = await add(prod, "noop", "after-sigterm")
                code = await asyncio.to_thread(worker.wait, 30)
            finally:
                if worker.poll() is None:
                    worker.kill()
            waiting = await prod.queue.getJobCounts("waiting")
            return running, later, code, waiting["waiting"]

    running, later, code, waiting = asyncio.run(scenario())
    assert code == 0, (tmp_path / "worker.log").read_text()[-2000:]
    assert job_row(settings, running)["state"] == "completed"
    assert job_row(settings, later)["state"] == "queued"
    assert waiting == 1


def test_sigterm_past_grace_leaves_job_to_stalled_recovery(settings, tmp_path):
    settings = replace(
        settings, concurrency=1, shutdown_grace_s=1, lock_duration_ms=2000, stalled_interval_ms=1000
    )

    async def scenario():
        async with producer(settings) as prod:
            job_id = await add(prod, "sleep", "4")
            worker = spawn_worker(settings, tmp_path / "worker.log")
            try:
                await wait_for_state(settings, job_id, "active", timeout_s=30)
                children = psutil.Process(worker.pid).children(recursive=True)
                worker.send_signal(signal.SIGTERM)
                started = time.monotonic()
                code = await asyncio.to_thread(worker.wait, 30)
                took = time.monotonic() - started
            finally:
                if worker.poll() is None:
                    worker.kill()
            await wait_for(lambda: _all_gone(children), timeout_s=5)
            assert job_row(settings, job_id)["state"] == "active"  # abandoned, not failed
            async with running_worker(settings):
                row = await wait_for_state(settings, job_id, "completed", timeout_s=30)
            return code, took, row

    code, took, row = asyncio.run(scenario())
    assert code == 0
    assert took < 4
    assert row["attempt"] == 2


async def _completed_count(queue, expected: int) -> bool:
    return (await queue.getJobCounts("completed"))["completed"] == expected


def test_postgres_outage_loses_no_outcome(settings):
    proxy = proxy_for(settings.database_url, 5432)
    worker_settings = replace(settings, database_url=url_through(settings.database_url, proxy.port))

    async def scenario():
        async with producer(settings) as prod:
            async with running_worker(worker_settings):
                ids = [await add(prod, "sleep", f"0.{i + 5}") for i in range(4)]
                await wait_for(lambda: job_row(settings, ids[0])["state"] == "active")
                proxy.cut()
                await asyncio.sleep(4)  # jobs finish processing while PostgreSQL is away
                during = await prod.queue.getJobCounts("completed", "active", "waiting")
                rows_during = [job_row(settings, job_id)["state"] for job_id in ids]
                proxy.restore()
                rows = [
                    await wait_for_state(settings, job_id, "completed", timeout_s=60)
                    for job_id in ids
                ]
                # the queue moves each job right after its status is stored
                await wait_for(lambda: _completed_count(prod.queue, 4))
            return ids, during, rows_during, rows

    try:
        ids, during, rows_during, rows = asyncio.run(scenario())
    finally:
        proxy.stop()
    # nothing was completed in the queue while its status could not be stored
    assert during["completed"] == 0, during
    assert "completed" not in rows_during
    assert [row["state"] for row in rows] == ["completed"] * 4
    for job_id in ids:
        assert [e["state"] for e in job_events(settings, job_id)].count("completed") == 1


def test_worker_process_exits_cleanly_on_sigint(settings, tmp_path):
    worker = spawn_worker(settings, tmp_path / "worker.log")
    try:
        time.sleep(3)
        worker.send_signal(signal.SIGINT)
        assert worker.wait(20) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    log_text = (tmp_path / "worker.log").read_text()
    assert '"message": "worker stopped"' in log_text
    assert '"message": "worker started on redis://' in log_text


def test_redis_outage_mid_run_loses_no_job(settings):
    """The connection to Redis drops (as in a restart or failover) while a job runs and while
    the worker idles; once Redis is back, the running job and new ones complete."""
    proxy = proxy_for(settings.redis_url, 6379)
    worker_settings = replace(settings, redis_url=url_through(settings.redis_url, proxy.port))

    async def scenario():
        async with producer(settings) as prod, running_worker(worker_settings):
            running = await add(prod, "sleep", "2")
            await wait_for(lambda: job_row(settings, running)["state"] == "active")
            proxy.cut()
            await asyncio.sleep(3)
            queued_during = await add(prod, "noop", "during-outage")
            proxy.restore()
            after = await add(prod, "noop", "after-outage")
            return [
                await wait_for_state(settings, job_id, "completed", timeout_s=60)
                for job_id in (running, queued_during, after)
            ]

    try:
        rows = asyncio.run(scenario())
    finally:
        proxy.stop()
    assert [row["state"] for row in rows] == ["completed"] * 3
    for row in rows:
        assert [e["state"] for e in job_events(settings, row["id"])].count("completed") == 1
