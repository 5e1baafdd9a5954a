"""The attempt guard of the status store (offload/db/status.py): a write from an older attempt,
a worker that lost its lock while a newer attempt runs, changes nothing and logs no event; the
start of an attempt over a final row is taken whatever its number (a job retried from outside
with its attempt counters reset starts again at 1).

Statement by statement against the real PostgreSQL, then with real workers: one whose Redis
connection is cut (through a TCP proxy) while it runs a job, which another worker then takes
over as the next attempt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from offload.db.status import JobIdentity, StatusStore
from offload.jobs import JobRef
from offload.settings import Settings
from tests.support.harness import (
    add,
    job_events,
    job_row,
    producer,
    queue_job_in_state,
    running_worker,
    status_store,
    wait_for,
    wait_for_state,
)
from tests.support.redis_acl import as_user
from tests.support.tcpproxy import proxy_for, url_through

JOB = JobIdentity("job-1", "inspect", "uploads", JobRef("bucket", "uploads/a/b/c.bin"))


def _snapshot(settings: Settings) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    return job_row(settings, JOB.job_id), job_events(settings, JOB.job_id)


async def _at_attempt_2(store: StatusStore, state: str) -> None:
    """The row as a second attempt leaves it: attempt 1 failed and was retried, attempt 2 is
    ``active`` (running) or ``retrying`` (failed too, waiting out its backoff)."""
    assert await store.mark_queued(JOB, 3)
    assert await store.mark_active(JOB, 1, 3, "worker-a")
    assert await store.mark_retrying(JOB.job_id, 1, "attempt 1 failed", "stack 1")
    assert await store.mark_active(JOB, 2, 3, "worker-b")
    assert await store.mark_progress(JOB.job_id, 2, 40)
    if state == "retrying":
        assert await store.mark_retrying(JOB.job_id, 2, "attempt 2 failed", "stack 2")


ZOMBIE_WRITES: dict[str, Callable[[StatusStore], Awaitable[bool]]] = {
    "progress": lambda store: store.mark_progress(JOB.job_id, 1, 99),
    "completed": lambda store: store.mark_completed(JOB.job_id, 1, {"from": "attempt 1"}),
    "retrying": lambda store: store.mark_retrying(JOB.job_id, 1, "zombie", "zombie stack"),
    "failed": lambda store: store.mark_failed(JOB.job_id, 1, "zombie", "zombie stack"),
    "active": lambda store: store.mark_active(JOB, 1, 3, "worker-a"),
    # a deferred failure (the stall limit) computed from attempt 1's view of the job
    "failed_unrun": lambda store: store.mark_failed_unrun(JOB, 1, 3, "worker-a", "stalled"),
}


@pytest.mark.parametrize("row_state", ["active", "retrying"])
@pytest.mark.parametrize("write", sorted(ZOMBIE_WRITES))
def test_a_write_of_an_older_attempt_changes_nothing(settings, write, row_state):
    async def scenario():
        async with status_store(settings) as store:
            await _at_attempt_2(store, row_state)
            before = _snapshot(settings)
            taken = await ZOMBIE_WRITES[write](store)
            return before, taken, _snapshot(settings)

    before, taken, after = asyncio.run(scenario())
    assert taken is False
    assert after == before  # every column, updated_at included; no new event
    row, _ = after
    assert (row["state"], row["attempt"], row["worker_id"]) == (row_state, 2, "worker-b")


def test_the_live_attempt_still_writes_after_a_zombie_was_ignored(settings):
    async def scenario():
        async with status_store(settings) as store:
            await _at_attempt_2(store, "active")
            assert not await store.mark_completed(JOB.job_id, 1, {"from": "attempt 1"})
            assert await store.mark_progress(JOB.job_id, 2, 80)
            assert await store.mark_completed(JOB.job_id, 2, {"from": "attempt 2"})
            # and once the live attempt has finished, the zombie still cannot rewrite it
            assert not await store.mark_failed(JOB.job_id, 1, "late zombie", "")
        return _snapshot(settings)

    row, events = asyncio.run(scenario())
    assert (row["state"], row["attempt"], row["result"]) == ("completed", 2, {"from": "attempt 2"})
    assert row["error_message"] is None and row["progress"] == 100
    assert [(e["state"], e["attempt"]) for e in events] == [
        ("queued", 0),
        ("active", 1),
        ("retrying", 1),
        ("active", 2),
        ("completed", 2),
    ]


@pytest.mark.parametrize("final", ["completed", "failed"])
def test_a_new_run_starting_at_attempt_1_is_taken_over_a_final_row(settings, final):
    """A job retried from Node BullMQ or Bull Board with ``resetAttemptsMade`` and
    ``resetAttemptsStarted`` starts again at attempt 1 over a row that ended at attempt 3."""

    async def scenario():
        async with status_store(settings) as store:
            assert await store.mark_queued(JOB, 3)
            for attempt in (1, 2):
                assert await store.mark_active(JOB, attempt, 3, "worker-a")
                assert await store.mark_retrying(JOB.job_id, attempt, "no", "")
            assert await store.mark_active(JOB, 3, 3, "worker-a")
            if final == "completed":
                assert await store.mark_completed(JOB.job_id, 3, {"run": 1})
            else:
                assert await store.mark_failed(JOB.job_id, 3, "run 1 failed", "")
            ended = job_row(settings, JOB.job_id)
            assert await store.mark_active(JOB, 1, 3, "worker-b")
            restarted = job_row(settings, JOB.job_id)
            assert await store.mark_completed(JOB.job_id, 1, {"run": 2})
            return ended, restarted, _snapshot(settings)

    ended, restarted, (row, events) = asyncio.run(scenario())
    assert (ended["state"], ended["attempt"]) == (final, 3)
    assert (restarted["state"], restarted["attempt"], restarted["worker_id"]) == (
        "active",
        1,
        "worker-b",
    )
    assert restarted["finished_at"] is None and restarted["result"] is None
    assert (row["state"], row["attempt"], row["result"]) == ("completed", 1, {"run": 2})
    assert [(e["state"], e["attempt"]) for e in events][-3:] == [
        (final, 3),
        ("active", 1),
        ("completed", 1),
    ]


# --- with real workers ------------------------------------------------------------------------


def _logged(caplog: pytest.LogCaptureFixture, message: str, job_id: str, attempt: int) -> bool:
    return any(
        record.getMessage() == message
        and getattr(record, "job_id", None) == job_id
        and getattr(record, "attempt", None) == attempt
        for record in caplog.records
    )


def test_a_worker_that_lost_its_lock_cannot_overwrite_the_attempt_that_took_over(
    settings, tmp_path: Path, caplog
):
    """Worker A's Redis connection is cut while it runs attempt 1: its lock expires, worker B's
    stalled check puts the job back and B runs attempt 2. A's child keeps running; once the
    connection is back it finishes (progress, then a result): A's writes for attempt 1 must not
    touch B's row."""
    caplog.set_level(logging.INFO, logger="fargate_worker.worker")
    settings = replace(
        settings, lock_duration_ms=2000, stalled_interval_ms=1000, max_stalled_count=1
    )
    worker_url = as_user(settings, "worker").redis_url  # under the ACL: the worker user
    proxy = proxy_for(worker_url, 6379)
    settings_a = replace(settings, redis_url=url_through(worker_url, proxy.port))
    gates = tmp_path / "gates"
    gates.mkdir()

    async def scenario():
        async with producer(settings) as prod:
            async with running_worker(settings_a) as worker_a:
                job_id = await add(prod, "gated_by_attempt", "k", bucket=str(gates))
                first = await wait_for_state(settings, job_id, "active", timeout_s=30)
                assert first["worker_id"] == worker_a.worker_id
                proxy.cut()
                async with running_worker(settings) as worker_b:
                    taken = await wait_for(
                        lambda: (
                            (row := job_row(settings, job_id))
                            and row["attempt"] == 2
                            and row["state"] == "active"
                            and row
                        ),
                        timeout_s=60,
                    )
                    # The partition heals and A's attempt 1 ends: progress, result, status
                    # writes, then a queue move its lost lock refuses.
                    proxy.restore()
                    (gates / "go-1").touch()
                    await wait_for(
                        lambda: _logged(caplog, "job completed", job_id, 1), timeout_s=60
                    )
                    during = job_row(settings, job_id), job_events(settings, job_id)
                    (gates / "go-2").touch()
                    done = await wait_for_state(settings, job_id, "completed", timeout_s=30)
                    job = await wait_for(
                        lambda: queue_job_in_state(prod.queue, job_id, "completed")
                    )
            return first, taken, worker_b.worker_id, during, done, job

    try:
        first, taken, worker_b, (row_during, events_during), done, job = asyncio.run(scenario())
    finally:
        proxy.stop()
    assert first["attempt"] == 1
    assert taken["worker_id"] == worker_b
    # A finished attempt 1 while B ran attempt 2: B's row is as B left it
    assert row_during == taken
    assert [(e["state"], e["attempt"]) for e in events_during] == [
        ("queued", 0),
        ("active", 1),
        ("active", 2),
    ]
    assert (done["attempt"], done["worker_id"], done["result"]) == (2, worker_b, {"attempt": 2})
    assert job.returnvalue == {"attempt": 2}
    states = [(e["state"], e["attempt"]) for e in job_events(settings, done["id"])]
    assert states == [("queued", 0), ("active", 1), ("active", 2), ("completed", 2)]
