"""The worker against real Redis and PostgreSQL: outcomes, retries, failures, sandboxing."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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


def test_job_completes_and_status_is_recorded(settings):
    async def scenario():
        async with producer(settings) as prod, running_worker(settings):
            job_id = await add(prod, "progress", "k")
            row = await wait_for_state(settings, job_id, "completed")
            job = await wait_for(lambda: queue_job_in_state(prod.queue, job_id, "completed"))
            return row, job

    row, job = asyncio.run(scenario())
    assert row["result"] == {"done": True}
    assert row["attempt"] == 1
    assert row["progress"] == 100
    assert row["finished_at"] is not None and row["error_message"] is None
    assert job.progress == 90  # the child's last report reached the queue's job too
    states = [event["state"] for event in job_events(settings, row["id"])]
    assert states == ["queued", "active", "completed"]


def test_progress_is_visible_while_running(settings):
    async def scenario():
        async with producer(settings) as prod, running_worker(settings):
            job_id = await add(prod, "progress", "k")
            seen = await wait_for(
                lambda: (
                    (row := job_row(settings, job_id))
                    and row["state"] == "active"
                    and row["progress"] in (10, 50, 90)
                    and row["progress"]
                )
            )
            await wait_for_state(settings, job_id, "completed")
            return seen

    assert asyncio.run(scenario()) in (10, 50, 90)


def test_a_job_shorter_than_the_progress_interval_writes_no_progress(settings):
    """Progress reaches Redis and PostgreSQL at most once a second, the first time a second
    into the job: a short job (an inspect of a small file reports 99 then 100) costs no write
    besides its outcome, whose row says 100. (Both stores are written in the same step, so the
    queue's job shows whether anything was.)"""

    async def scenario():
        async with producer(settings) as prod, running_worker(settings):
            job_id = await add(prod, "quick_progress", "k")
            row = await wait_for_state(settings, job_id, "completed")
            job = await wait_for(lambda: queue_job_in_state(prod.queue, job_id, "completed"))
            return row, job

    row, job = asyncio.run(scenario())
    assert row["progress"] == 100
    assert job.progress == 0  # bullmq's default: no progress was sent to the queue


def test_retries_with_exponential_backoff(settings):
    settings = replace(settings, default_backoff_ms=500, default_attempts=4)

    async def scenario():
        async with producer(settings) as prod, running_worker(settings):
            job_id = await add(prod, "fail_until", "4")
            await wait_for_state(settings, job_id, "completed", timeout_s=60)
            return job_id

    job_id = asyncio.run(scenario())
    events = job_events(settings, job_id)
    actives = [e["at"] for e in events if e["state"] == "active"]
    failures = [e["at"] for e in events if e["state"] == "retrying"]
    assert len(actives) == 4 and len(failures) == 3
    gaps = [(actives[i + 1] - failures[i]).total_seconds() for i in range(3)]
    # exponential: 0.5 s, 1 s, 2 s (BullMQ: delay * 2^(attempt-1)). Never early (the delay
    # counts from after the failure is stored), so a fixed or linear backoff fails the lower
    # bounds; the upper ones allow a loaded machine's pickup latency, yet a doubling too many
    # (1, 2, 4 s) fails the last.
    for gap, expected in zip(gaps, (0.5, 1.0, 2.0), strict=True):
        assert expected - 0.05 <= gap <= expected + 1.5, (gaps, expected)
    assert job_row(settings, job_id)["attempt"] == 4


def _run_until_failed(settings, name: str) -> tuple[dict, Any]:
    """Add a ``name`` job, run a worker until the job is failed in PostgreSQL and in the
    queue; returns its status row and its bullmq job."""

    async def scenario():
        async with producer(settings) as prod, running_worker(settings):
            job_id = await add(prod, name, "k")
            row = await wait_for_state(settings, job_id, "failed", timeout_s=30)
            job = await wait_for(lambda: queue_job_in_state(prod.queue, job_id, "failed"))
            return row, job

    return asyncio.run(scenario())


def test_poison_job_ends_failed_with_reason_and_stack(settings):
    row, job = _run_until_failed(settings, "fail_always")
    assert row["attempt"] == settings.default_attempts == 3
    assert "ValueError: poison job" in row["error_message"]
    assert "attempt 3" in row["error_message"]
    assert 'tests/support/processors.py", line' in row["error_stack"]  # the child's stack
    assert "raise ValueError" in row["error_stack"]
    assert job.attemptsMade == 3 and "poison job" in job.failedReason
    states = [event["state"] for event in job_events(settings, row["id"])]
    assert states == ["queued", "active", "retrying", "active", "retrying", "active", "failed"]


def test_error_message_with_a_nul_byte_is_stored(settings):
    """PostgreSQL text refuses NUL: unsanitised, the outcome write raised and the row stayed
    ``active`` while bullmq failed the job."""
    row, job = _run_until_failed(settings, "fail_with_nul")
    assert "bad header: PNG\ufffd\ufffd where text was expected" in row["error_message"]
    assert "\x00" not in row["error_message"] and "\x00" not in row["error_stack"]
    assert row["attempt"] == job.attemptsMade == settings.default_attempts
    states = [event["state"] for event in job_events(settings, row["id"])]
    assert states == ["queued", "active", "retrying", "active", "retrying", "active", "failed"]


def test_unknown_job_name_fails_once_without_retries(settings):
    row, job = _run_until_failed(settings, "no_such_processor")
    assert row["attempt"] == 1
    assert "unknown job name 'no_such_processor'" in row["error_message"]
    assert job.attemptsMade == 1
    assert [e["state"] for e in job_events(settings, row["id"])] == ["queued", "active", "failed"]


def test_invalid_job_data_fails_without_retries(settings):
    async def scenario():
        async with producer(settings) as prod, running_worker(settings):
            await prod.queue.add("noop", {"bucket": "b"}, {"jobId": "bad-data", "attempts": 3})
            return await wait_for_state(settings, "bad-data", "failed")

    row = asyncio.run(scenario())
    assert row["attempt"] == 1
    assert "non-empty string 'key'" in row["error_message"]


def rows_once(settings, *jobs: tuple[str, str, str]) -> list[dict]:
    """Adds the jobs (name, key, state awaited) to one in-process worker at once; their rows
    once each has reached its state."""

    async def scenario() -> list[dict]:
        async with producer(settings) as prod, running_worker(settings):
            ids = [await add(prod, name, key) for name, key, _ in jobs]
            return [
                await wait_for_state(settings, job_id, state)
                for job_id, (_, _, state) in zip(ids, jobs, strict=True)
            ]

    return asyncio.run(scenario())


def test_child_crash_is_a_retried_attempt(settings):
    crash_row, oom_row = rows_once(
        settings, ("crash_until", "2", "completed"), ("memory_error", "2", "completed")
    )
    assert crash_row["attempt"] == 2 and crash_row["result"] == {"attempt": 2}
    crash_events = job_events(settings, crash_row["id"])
    assert "killed by SIGKILL" in crash_events[2]["message"]
    assert oom_row["attempt"] == 2
    assert "MemoryError" in job_events(settings, oom_row["id"])[2]["message"]


def test_a_job_allocating_past_the_childs_limit_fails_its_attempt_and_the_worker_goes_on(
    settings,
):
    """A decoder fed a bomb: the child's address space is bounded (OFFLOAD_SANDBOX_MEMORY_MIB),
    so the job gets a MemoryError, its attempt fails as any error does, and the next job runs
    in the same worker. The child also runs without core dumps and with no_new_privs."""
    settings = replace(settings, sandbox_memory_mib=768, default_attempts=1)
    bomb_row, fits_row = rows_once(
        settings, ("allocate", "2048", "failed"), ("allocate", "64", "completed")
    )
    assert bomb_row["attempt"] == 1 and "MemoryError" in bomb_row["error_message"]
    assert fits_row["result"] == {
        "address_space": 768 * 1024 * 1024,
        "core": 0,
        "no_new_privs": "1",
    }


def test_a_sandbox_child_finds_none_of_the_workers_secrets(settings, tmp_path):
    """A hostile file parsed in a child must find no credential to the queue or the database:
    not in its environment, not in the one the kernel keeps from its exec (the fork server's,
    which /proc shows whatever os.environ says since), not in the settings it is given."""
    marker = "pw-" + tmp_path.name[-12:].replace("_", "")
    url = urlsplit(settings.database_url)
    with_password = urlunsplit(url._replace(netloc=f"postgres:{marker}@{url.hostname}:{url.port}"))
    settings = replace(settings, database_url=with_password, default_attempts=1)
    worker = spawn_worker(
        settings, tmp_path / "worker.log", DATABASE_SECRET_ARN="", OFFLOAD_TEST_MARKER="kept"
    )

    async def scenario():
        async with producer(settings) as prod:
            job_id = await add(prod, "environment", "x")
            return await wait_for_state(settings, job_id, "completed", timeout_s=60)

    try:
        row = asyncio.run(scenario())
    finally:
        worker.terminate()
        worker.wait(30)
    found = row["result"]
    assert "OFFLOAD_TEST_MARKER" in found["names"]  # the rest of the environment is there
    for name in ("DATABASE_URL", "REDIS_URL", "REDIS_AUTH_TOKEN", "DATABASE_SECRET_ARN"):
        assert name not in found["names"], name
        assert not any(entry.startswith(f"{name}=") for entry in found["kernel_environ"]), name
    assert marker not in json.dumps(found)
    assert found["settings"]["redis_auth_token"] is None


# What ECS and other AWS runtimes put in a container's environment to hand it credentials (fake
# values): the worker has them, a child must not. The worker's own credentials for moto come
# from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (the moto fixture), which boto3 prefers.
FAKE_AWS_ENVIRONMENT = {
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/5c4fbd0a-fake-guid",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN": "fake-authorization-token",
    "AWS_SESSION_TOKEN": "fake-session-token",
    "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/fake",
    "AWS_WEB_IDENTITY_TOKEN_FILE": "/nonexistent/fake-token",
    "AWS_EC2_METADATA_DISABLED": "true",  # no instance metadata here: fail fast, not in 3 s
}
SNOOPED_KEY = "uploads/user-1/up-1/hostile.bin"
OTHER_USERS_KEY = "uploads/other-user/up-2/secret.bin"


def _snoop(settings, moto_endpoint, s3, bucket, tmp_path) -> dict[str, Any]:
    """The ``snoop`` processor's findings in a child of an unprivileged worker (the container's
    setting, harness.UNPRIVILEGED) that has the fake AWS environment above."""
    s3.put_object(Bucket=bucket, Key=SNOOPED_KEY, Body=b"the job's own object")
    s3.put_object(Bucket=bucket, Key=OTHER_USERS_KEY, Body=b"another user's file")
    settings = replace(settings, s3_endpoint_url=moto_endpoint, default_attempts=1)
    worker = spawn_worker(
        settings, tmp_path / "worker.log", unprivileged=True, **FAKE_AWS_ENVIRONMENT
    )

    async def scenario():
        async with producer(settings) as prod:
            job_id = await add(prod, "snoop", SNOOPED_KEY, bucket=bucket)
            return await wait_for_state(settings, job_id, "completed", timeout_s=60)

    try:
        row = asyncio.run(scenario())
    except TimeoutError as exc:
        log = (tmp_path / "worker.log").read_text(errors="replace")[-4000:]
        raise AssertionError(f"the snoop job did not complete; the worker's log:\n{log}") from exc
    finally:
        worker.terminate()
        worker.wait(30)
    return row["result"]


def test_a_sandbox_child_cannot_read_its_workers_or_its_siblings_memory(
    settings, moto_endpoint, s3, bucket, tmp_path
):
    """Children run as the worker's uid; what keeps a compromised one out of the worker's
    environment and memory (the Redis token, the database URL, the ECS credentials path), and
    out of the other children (other users' files), is that none of them is dumpable
    (hardening.make_undumpable): the kernel then refuses /proc/<pid>/environ and /mem to a
    process of the same uid without CAP_SYS_PTRACE, which the container does not grant."""
    found = _snoop(settings, moto_endpoint, s3, bucket, tmp_path)
    assert found["uid"] != 0
    assert found["siblings"] >= 1  # the pool's other child: the check below covers one
    assert found["proc"] and all(what == "refused" for what in found["proc"].values()), found[
        "proc"
    ]


def test_a_sandbox_child_has_no_aws_credentials_and_reaches_only_its_jobs_objects(
    settings, moto_endpoint, s3, bucket, tmp_path
):
    """The task role reads every upload and the database secret: a child gets none of the
    variables that lead to AWS credentials, so a client it makes has none; it reads its job's
    object and writes its outputs through URLs the worker presigns for exactly those
    (s3grants.py), and anything else is refused."""
    found = _snoop(settings, moto_endpoint, s3, bucket, tmp_path)
    credentials = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", *FAKE_AWS_ENVIRONMENT}
    credentials.discard("AWS_EC2_METADATA_DISABLED")
    assert not credentials & set(found["aws_environment"]), found["aws_environment"]
    assert found["own_credentials"] == "NoCredentialsError"
    assert found["s3"] == {
        "read own object": "read: " + repr(b"the job's own object"),
        "read another object": "refused",
        "write own output": "written",
        "write elsewhere": "refused",
    }
    written = s3.get_object(Bucket=bucket, Key="processed/user-1/up-1/snoop.txt")
    assert written["Body"].read() == b"snooped"
    assert (
        s3.get_object(Bucket=bucket, Key=OTHER_USERS_KEY)["Body"].read() == b"another user's file"
    )


def test_job_past_timeout_has_its_child_killed(settings):
    from fargate_worker.processors import _REGISTRY, Processor

    settings = replace(settings, job_timeout_s=1, default_attempts=1)

    async def scenario():
        async with producer(settings) as prod, running_worker(settings) as worker:
            pids_before = set(worker.sandbox.child_pids)
            job_id = await add(prod, "sleep", "30")
            started = time.monotonic()
            row = await wait_for_state(settings, job_id, "failed", timeout_s=15)
            elapsed = time.monotonic() - started
            await wait_for(lambda: len(worker.sandbox.child_pids) == settings.concurrency)
            return row, elapsed, pids_before, set(worker.sandbox.child_pids)

    row, elapsed, before, after = asyncio.run(scenario())
    # (the worker loaded the test processors: in this process too, whatever ran before here)
    assert "sleep" in _REGISTRY and isinstance(_REGISTRY["sleep"], Processor)
    assert "timeout" in row["error_message"]
    assert elapsed < 15  # the job sleeps 30 s: cut short at its 1 s timeout, even under load
    assert len(before - after) == 1  # the timed-out child was replaced


def test_children_are_recycled_after_n_jobs(settings):
    settings = replace(settings, sandbox_max_jobs=2, concurrency=1)

    async def scenario():
        async with producer(settings) as prod, running_worker(settings) as worker:
            pids = set()
            for index in range(5):
                job_id = await add(prod, "noop", f"k{index}")
                await wait_for_state(settings, job_id, "completed")
                pids.update(worker.sandbox.child_pids)
            return pids

    assert len(asyncio.run(scenario())) >= 3  # 5 jobs, 2 per child


def test_cpu_bound_job_is_not_marked_stalled(settings):
    # lock 1 s, stalled check every 0.5 s, job holds the CPU for 4 s in pure Python
    settings = replace(settings, lock_duration_ms=1000, stalled_interval_ms=500, default_attempts=1)

    async def scenario():
        async with producer(settings) as prod, running_worker(settings) as worker:
            stalled: list[str] = []
            worker.bull.on("stalled", lambda job_id, *_: stalled.append(job_id))
            job_id = await add(prod, "cpu", "4")
            row = await wait_for_state(settings, job_id, "completed", timeout_s=20)
            return row, stalled

    row, stalled = asyncio.run(scenario())
    assert stalled == []
    assert row["attempt"] == 1
    assert [e["state"] for e in job_events(settings, row["id"])] == [
        "queued",
        "active",
        "completed",
    ]


def test_duplicate_enqueue_gives_one_job(settings):
    async def scenario():
        async with producer(settings) as prod:
            first = await add(prod, "noop", "same/key")
            second = await add(prod, "noop", "same/key")
            counts = await prod.queue.getJobCounts("waiting")
            return first, second, counts

    first, second, counts = asyncio.run(scenario())
    assert first == second
    assert counts["waiting"] == 1
    assert [e["state"] for e in job_events(settings, first)] == ["queued"]
