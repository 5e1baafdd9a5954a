"""Failure modes across processes: SIGKILL, SIGTERM, SIGINT, PostgreSQL and Redis outages."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

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
from tests.support.tcpproxy import proxy_for, url_through


def _all_gone(processes: list[psutil.Process]) -> bool:
    return not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _logged(log_path: Path, message: str) -> bool:
    """Whether the worker's JSON log has a line whose message starts with ``message``."""
    return f'"message": "{message}' in (log_path.read_text() if log_path.exists() else "")


def _done_at(gate: Path, count: int) -> dict[str, float] | None:
    """When each ``gated`` job finished its work (job id -> time), once ``count`` have."""
    done = {line.split()[0]: float(line.split()[2]) for line in _lines(gate / "done.log")}
    return done if len(done) >= count else None


@pytest.mark.slow
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
    settings = replace(settings, concurrency=1, shutdown_grace_s=60)
    log_path = tmp_path / "worker.log"

    async def scenario():
        async with producer(settings) as prod:
            running = await add(prod, "gated", "running", bucket=str(tmp_path))
            worker = spawn_worker(settings, log_path)
            try:
                await wait_for_state(settings, running, "active", timeout_s=30)
                worker.send_signal(signal.SIGTERM)
                # the worker is closing, and its job still runs (the gate is shut)
                await wait_for(lambda: _logged(log_path, "shutting down"), timeout_s=30)
                later = await add(prod, "noop", "after-sigterm")
                (tmp_path / "go").touch()
                code = await asyncio.to_thread(worker.wait, 60)
            finally:
                if worker.poll() is None:
                    worker.kill()
            waiting = await prod.queue.getJobCounts("waiting")
            return running, later, code, waiting["waiting"]

    running, later, code, waiting = asyncio.run(scenario())
    assert code == 0, log_path.read_text()[-2000:]
    assert job_row(settings, running)["state"] == "completed"
    assert job_row(settings, later)["state"] == "queued"
    assert waiting == 1


def test_sigterm_past_grace_leaves_job_to_stalled_recovery(settings, tmp_path):
    settings = replace(
        settings, concurrency=1, shutdown_grace_s=1, lock_duration_ms=2000, stalled_interval_ms=1000
    )

    async def scenario():
        async with producer(settings) as prod:
            # the job cannot end before the gate opens: the worker must give up on it
            job_id = await add(prod, "gated", "stuck", bucket=str(tmp_path))
            worker = spawn_worker(settings, tmp_path / "worker.log")
            try:
                await wait_for_state(settings, job_id, "active", timeout_s=30)
                children = psutil.Process(worker.pid).children(recursive=True)
                worker.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(worker.wait, 60)
            finally:
                if worker.poll() is None:
                    worker.kill()
            await wait_for(lambda: _all_gone(children), timeout_s=30)
            assert job_row(settings, job_id)["state"] == "active"  # abandoned, not failed
            assert _done_at(tmp_path, 1) is None  # and its work never finished
            (tmp_path / "go").touch()
            async with running_worker(settings):
                row = await wait_for_state(settings, job_id, "completed", timeout_s=60)
            return code, row

    code, row = asyncio.run(scenario())
    assert code == 0, (tmp_path / "worker.log").read_text()[-2000:]
    assert row["attempt"] == 2


async def _completed_count(queue, expected: int) -> bool:
    return (await queue.getJobCounts("completed"))["completed"] == expected


@pytest.mark.slow
def test_postgres_outage_loses_no_outcome(settings, tmp_path, caplog):
    proxy = proxy_for(settings.database_url, 5432)
    worker_settings = replace(settings, database_url=url_through(settings.database_url, proxy.port))
    caplog.set_level(logging.WARNING, logger="offload.db.pool")

    def outcome_write_failed(job_id: str) -> bool:
        return any(
            getattr(record, "job_id", None) == job_id
            and "write completed failed" in record.getMessage()
            for record in caplog.records
        )

    async def scenario():
        async with producer(settings) as prod, running_worker(worker_settings):
            # two jobs (the worker's concurrency) in flight: stored active, work not done
            ids = [await add(prod, "gated", name, bucket=str(tmp_path)) for name in "ab"]
            await wait_for(
                lambda: all(job_row(settings, job_id)["state"] == "active" for job_id in ids),
                timeout_s=30,
            )
            proxy.cut()
            cut_at = time.time()
            (tmp_path / "go").touch()  # their work ends while PostgreSQL is away
            done_at = await wait_for(lambda: _done_at(tmp_path, len(ids)), timeout_s=30)
            # the worker tried to store each outcome, and holds the job meanwhile
            for job_id in ids:
                await wait_for(lambda job_id=job_id: outcome_write_failed(job_id), timeout_s=30)
            during = await prod.queue.getJobCounts("completed", "active")
            rows_during = [job_row(settings, job_id)["state"] for job_id in ids]
            restored_at = time.time()
            proxy.restore()
            rows = [
                await wait_for_state(settings, job_id, "completed", timeout_s=60) for job_id in ids
            ]
            # the queue moves each job right after its status is stored
            await wait_for(lambda: _completed_count(prod.queue, len(ids)), timeout_s=30)
        return ids, cut_at, done_at, during, rows_during, restored_at, rows

    try:
        ids, cut_at, done_at, during, rows_during, restored_at, rows = asyncio.run(scenario())
    finally:
        proxy.stop()
    assert all(cut_at < done_at[job_id] < restored_at for job_id in ids), done_at
    # nothing was completed in the queue while its status could not be stored
    assert during == {"completed": 0, "active": 2}, during
    assert rows_during == ["active"] * 2
    assert [row["state"] for row in rows] == ["completed"] * 2
    for job_id in ids:
        completed = [e for e in job_events(settings, job_id) if e["state"] == "completed"]
        assert len(completed) == 1
        assert completed[0]["at"].timestamp() > restored_at  # stored after the outage


def test_worker_process_exits_cleanly_on_sigint(settings, tmp_path):
    log_path = tmp_path / "worker.log"
    worker = spawn_worker(settings, log_path)
    try:
        # logged once started, after its signal handlers were installed
        asyncio.run(wait_for(lambda: _logged(log_path, "worker started on"), timeout_s=60))
        worker.send_signal(signal.SIGINT)
        assert worker.wait(60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    log_text = log_path.read_text()
    assert '"message": "worker stopped"' in log_text
    assert '"message": "worker started on redis://' in log_text


def test_redis_outage_mid_run_loses_no_job(settings, tmp_path):
    """The connection to Redis drops (as in a restart or failover) while a job runs and while
    the worker idles; once Redis is back, the running job and new ones complete."""
    proxy = proxy_for(settings.redis_url, 6379)
    worker_settings = replace(settings, redis_url=url_through(settings.redis_url, proxy.port))

    async def scenario():
        async with producer(settings) as prod, running_worker(worker_settings):
            running = await add(prod, "gated", "running", bucket=str(tmp_path))
            await wait_for(lambda: job_row(settings, running)["state"] == "active", timeout_s=30)
            proxy.cut()
            cut_at = time.time()
            (tmp_path / "go").touch()  # the job's work ends during the outage
            # its status is stored (PostgreSQL is up): the worker is now moving it in the queue,
            # which cannot hear of it
            await wait_for_state(settings, running, "completed", timeout_s=30)
            still_active = await prod.queue.getJobState(running)
            queued_during = await add(prod, "noop", "during-outage")
            restored_at = time.time()
            proxy.restore()
            after = await add(prod, "noop", "after-outage")
            rows = [
                await wait_for_state(settings, job_id, "completed", timeout_s=60)
                for job_id in (running, queued_during, after)
            ]
            await wait_for(
                lambda: queue_job_in_state(prod.queue, running, "completed"), timeout_s=60
            )
            return cut_at, _done_at(tmp_path, 1), still_active, restored_at, rows

    try:
        cut_at, done_at, still_active, restored_at, rows = asyncio.run(scenario())
    finally:
        proxy.stop()
    assert cut_at < done_at[rows[0]["id"]] < restored_at  # in flight when Redis went away
    # done and stored in PostgreSQL during the outage, not yet in the queue: the queue heard
    # of it after the outage, from the same attempt (no re-run)
    assert still_active == "active"
    assert rows[0]["attempt"] == 1
    assert [row["state"] for row in rows] == ["completed"] * 3
    for row in rows:
        assert [e["state"] for e in job_events(settings, row["id"])].count("completed") == 1
