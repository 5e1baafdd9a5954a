"""The sandbox (fargate_worker/sandbox.py, sandbox_child.py): what a processor's errors and
results become once they cross the pipe, and how the pool replaces children that will not
start. Real worker, Redis and PostgreSQL; real child processes."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from dataclasses import dataclass, replace
from typing import Any

import pytest

from fargate_worker import sandbox
from fargate_worker.errors import SandboxCrashed
from offload.settings import Settings
from tests.support.harness import (
    add,
    job_events,
    job_row,
    producer,
    queue_job_in_state,
    running_worker,
    wait_for,
    wait_for_state,
)


@dataclass
class Outcome:
    row: dict[str, Any]  # the job's status row once final
    job: Any  # its bullmq job once final
    reused_children: bool  # the pool kept the very same child processes
    next_row: dict[str, Any]  # a job added afterwards, once completed


def _run_to_the_end(settings: Settings, name: str, key: str) -> Outcome:
    """One ``name`` job on a real worker until it is final in PostgreSQL and in the queue, then
    one more job: the worker (and its children) must go on working."""

    async def final_row(job_id: str) -> dict[str, Any] | None:
        row = job_row(settings, job_id)
        return row if row and row["state"] in ("completed", "failed") else None

    async def scenario() -> Outcome:
        async with producer(settings) as prod, running_worker(settings) as worker:
            children = set(worker.sandbox.child_pids)
            job_id = await add(prod, name, key)
            row = await wait_for(lambda: final_row(job_id), timeout_s=60)
            job = await wait_for(
                lambda: queue_job_in_state(prod.queue, job_id, row["state"]), timeout_s=30
            )
            reused = set(worker.sandbox.child_pids) == children
            after = await add(prod, "noop", f"after-{name}-{key}")
            next_row = await wait_for_state(settings, after, "completed", timeout_s=30)
            return Outcome(row, job, reused, next_row)

    return asyncio.run(scenario())


def _states(settings: Settings, job_id: str) -> list[str]:
    return [event["state"] for event in job_events(settings, job_id)]


def test_a_permanent_error_raised_in_the_child_fails_the_job_at_once(settings):
    outcome = _run_to_the_end(settings, "fail_permanently", "scan.tiff")
    row, job = outcome.row, outcome.job
    assert settings.default_attempts == 3  # attempts were left, none was spent
    assert (row["state"], row["attempt"]) == ("failed", 1)
    assert row["error_message"] == "PermanentJobError: not an image: scan.tiff"
    assert "raise PermanentJobError" in row["error_stack"]  # the child's own stack
    assert (job.attemptsMade, job.failedReason) == (1, row["error_message"])
    assert _states(settings, row["id"]) == ["queued", "active", "failed"]
    assert outcome.reused_children  # the child reported the error and took the next job
    assert outcome.next_row["result"] == {"ok": True}


def test_an_error_quoting_an_undecodable_file_name_is_stored(settings):
    """UTF-8, and so Redis and PostgreSQL text, cannot hold a lone surrogate (how Python holds
    the bytes of an undecodable file name): unescaped, every outcome write raised, the row
    stayed ``active`` while bullmq failed the job, with the encoding error as its reason."""
    outcome = _run_to_the_end(settings, "fail_with_surrogate", "k")
    row, job = outcome.row, outcome.job
    assert (row["state"], row["attempt"]) == ("failed", settings.default_attempts)
    assert row["error_message"] == "ValueError: cannot read caf\\udce9.txt"
    assert "caf\\udce9.txt" in row["error_stack"]
    assert job.failedReason == row["error_message"]
    retried = ["active", "retrying"] * (settings.default_attempts - 1)
    assert _states(settings, row["id"]) == ["queued", *retried, "active", "failed"]


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("set", "Object of type set is not JSON serializable"),
        ("nan", "Out of range float values are not JSON compliant"),
        ("infinity", "Out of range float values are not JSON compliant"),
        ("nul", "NUL character"),
        ("surrogate", "surrogates not allowed"),
        ("deep", "maximum recursion depth exceeded"),
    ],
)
def test_a_result_that_cannot_be_stored_as_json_fails_the_job_clearly(settings, kind, reason):
    """The result is stored as JSON in Redis and PostgreSQL. A result JSON cannot hold must
    fail the job with a message saying so, at once (running it again gives the same result),
    and not stop the worker. NaN, infinities, NUL characters and lone surrogates are written by
    Python's json but refused by PostgreSQL's jsonb: stored as they were, each attempt failed
    on the status write with PostgreSQL's message, and was retried to the last one."""
    outcome = _run_to_the_end(settings, "returns", kind)
    row, job = outcome.row, outcome.job
    assert (row["state"], row["attempt"]) == ("failed", 1), row["error_message"]
    assert row["error_message"].startswith("result of 'returns' is not JSON-serialisable: ")
    assert reason in row["error_message"]
    assert row["result"] is None
    assert (job.attemptsMade, job.failedReason) == (1, row["error_message"])
    assert _states(settings, row["id"]) == ["queued", "active", "failed"]
    assert outcome.reused_children
    assert outcome.next_row["result"] == {"ok": True}


def test_text_that_only_looks_like_an_escaped_nul_is_stored(settings):
    outcome = _run_to_the_end(settings, "returns", "escaped_nul_text")
    assert outcome.row["state"] == "completed", outcome.row["error_message"]
    assert outcome.row["result"] == {"text": "a \\u0000 in the text, and \\\\u0000"}
    assert outcome.job.returnvalue == outcome.row["result"]


# --- children that will not start ------------------------------------------------------------

_START_FAILED = re.compile(r"sandbox child failed to start \((.*)\), retrying in ([0-9.]+)s")


def _start_failures(
    caplog: pytest.LogCaptureFixture, since: int = 0
) -> list[tuple[float, str, float]]:
    """(when, why, announced delay) of each failed start the pool logged."""
    found = []
    for record in caplog.records[since:]:
        match = _START_FAILED.fullmatch(record.getMessage())
        if match:
            found.append((record.created, match[1], float(match[2])))
    return found


async def _crash_a_child(pool: sandbox.SandboxPool) -> None:
    """A job whose child dies mid-run: the pool replaces the child."""
    with pytest.raises(SandboxCrashed):
        await pool.run("crash", "crash_until", 1, {"bucket": "b", "key": "2"}, 60, print)


def test_children_that_fail_to_start_are_respawned_with_growing_delays(
    settings, monkeypatch, caplog
):
    """A replacement child that dies before it is ready (here: a LOG_LEVEL its logging refuses,
    in the environment each new child gets from the worker) is started again after a delay
    that grows along RESPAWN_BACKOFF_S and stays at its last value; a child that starts resets
    the delays. Jobs wait for a child meanwhile, and run once one starts."""
    monkeypatch.setattr(sandbox, "RESPAWN_BACKOFF_S", (0.2, 0.4, 0.8))
    caplog.set_level(logging.ERROR, logger="fargate_worker.sandbox")
    settings = replace(settings, concurrency=1)

    async def scenario():
        pool = sandbox.SandboxPool(settings, 1)
        await pool.start()
        try:
            monkeypatch.setenv("LOG_LEVEL", "NO-SUCH-LEVEL")
            await _crash_a_child(pool)
            waiting = asyncio.ensure_future(
                pool.run("j1", "noop", 1, {"bucket": "b", "key": "k"}, 60, print)
            )
            await wait_for(lambda: len(_start_failures(caplog)) >= 5, timeout_s=60)
            failures = _start_failures(caplog)
            assert not waiting.done() and pool.child_pids == []
            monkeypatch.setenv("LOG_LEVEL", "INFO")
            result = await asyncio.wait_for(waiting, 60)
            # once a child has started, a new run of failures starts from the first delay
            mark = len(caplog.records)
            monkeypatch.setenv("LOG_LEVEL", "NO-SUCH-LEVEL")
            await _crash_a_child(pool)
            await wait_for(lambda: len(_start_failures(caplog, mark)) >= 2, timeout_s=60)
            again = _start_failures(caplog, mark)
            monkeypatch.setenv("LOG_LEVEL", "INFO")
            await wait_for(lambda: len(pool.child_pids) == 1, timeout_s=60)
            return failures, result, again
        finally:
            await pool.close()

    failures, result, again = asyncio.run(scenario())
    assert all(why == "child exited with code 1" for _, why, _ in failures), failures
    delays = [delay for _, _, delay in failures]
    assert delays[:5] == [0.2, 0.4, 0.8, 0.8, 0.8]  # growing, then capped
    # each start came after the delay announced before it (a lower bound: no upper one)
    for (at, _, delay), (next_at, _, _) in itertools.pairwise(failures):
        assert next_at - at >= delay - 0.05, (delay, next_at - at)
    assert result == {"ok": True}
    assert [delay for _, _, delay in again[:2]] == [0.2, 0.4]  # reset by the successful start


def test_a_child_that_cannot_even_be_created_is_retried(settings, monkeypatch, caplog):
    """Creating a child can fail before it starts (its pipe: no file descriptor left, EMFILE):
    the pool retries with the same backoff instead of staying a child short for good."""
    monkeypatch.setattr(sandbox, "RESPAWN_BACKOFF_S", (0.2,))
    caplog.set_level(logging.ERROR, logger="fargate_worker.sandbox")
    settings = replace(settings, concurrency=1)
    real_pipe = sandbox._MP.Pipe
    refusals = [OSError(24, "Too many open files")] * 2

    def pipe(*args: Any, **kwargs: Any) -> Any:
        if refusals:
            raise refusals.pop()
        return real_pipe(*args, **kwargs)

    async def scenario():
        pool = sandbox.SandboxPool(settings, 1)
        await pool.start()
        try:
            monkeypatch.setattr(sandbox._MP, "Pipe", pipe)
            await _crash_a_child(pool)
            result = await asyncio.wait_for(
                pool.run("j1", "noop", 1, {"bucket": "b", "key": "k"}, 60, print), 60
            )
            return result, pool.child_pids
        finally:
            await pool.close()

    result, pids = asyncio.run(scenario())
    assert result == {"ok": True} and len(pids) == 1
    assert refusals == []
    assert [why for _, why, _ in _start_failures(caplog)] == ["[Errno 24] Too many open files"] * 2


def test_the_worker_runs_no_code_a_child_sends_it(settings, tmp_path):
    """A child parses hostile files: what it sends the worker is data (JSON), never a pickle,
    whose loading would run the child's code in the worker, which holds every secret."""
    marker = tmp_path / "ran-in-the-worker"
    settings = replace(settings, default_attempts=1)

    async def scenario():
        async with producer(settings) as prod, running_worker(settings):
            job_id = await add(prod, "pickle_to_the_worker", "x", bucket=str(marker))
            return await wait_for_state(settings, job_id, "failed", timeout_s=60)

    row = asyncio.run(scenario())
    assert not marker.exists()
    assert "unreadable message from the sandbox child" in row["error_message"]


def test_a_fresh_child_has_boto3_loaded_before_its_first_job(settings):
    """Children are recycled every few dozen jobs: each one importing boto3 and loading the S3
    model at its first job (~250 ms of CPU) cost more than small jobs themselves. The fork
    server loads them once (fargate_worker/sandbox_preload.py)."""
    settings = replace(settings, concurrency=1, sandbox_max_jobs=1)  # a new child every job

    async def scenario():
        pool = sandbox.SandboxPool(settings, 1)
        await pool.start()
        try:
            return [
                await pool.run(f"j{n}", "loaded", 1, {"bucket": "b", "key": "boto3"}, 60, print)
                for n in range(2)
            ]
        finally:
            await pool.close()

    assert asyncio.run(scenario()) == [{"loaded": True}, {"loaded": True}]
