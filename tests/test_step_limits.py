"""Per-step limits (offload.step_limits): a limited step runs from a queue of its own whose
global concurrency and rate limit every worker applies at start; each worker process consumes
every queue within its OFFLOAD_CONCURRENCY (fargate_worker.queues, fargate_worker.slots); the
reconciler and the queue metrics cover every queue. The limits are measured across two real
worker processes."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fargate_worker.slots import JobSlots
from lambdas import runtime
from offload.jobs import INSPECT, JobRef
from offload.pipelines import Step, StepLimits
from offload.queue import open_queue
from offload.settings import Settings, SettingsError
from offload.step_limits import (
    all_queues,
    format_step_limits,
    limited_steps,
    parse_step_limits,
    queue_for,
    steps,
)
from tests.support.apigw import call, configure
from tests.support.events import FakeContext, age_rows
from tests.support.events import invoke_reconciler as reconcile
from tests.support.harness import (
    add,
    job_row,
    producer,
    running_worker,
    spawn_worker,
    wait_for,
    wait_for_state,
)
from tests.support.redis_acl import as_environment

# --- the setting ------------------------------------------------------------------------------


def test_limits_are_read_from_json_and_written_back_the_same():
    text = (
        '{"thumbnail": {"maxConcurrent": 3}, "ocr_api": {"maxPerWindow": 10, "windowMs": 60000},'
        ' "both": {"maxConcurrent": 1, "maxPerWindow": 2}, "inspect": null}'
    )
    parsed = parse_step_limits(text)
    assert parsed == (
        ("both", StepLimits(max_concurrent=1, max_per_window=2, window_ms=1000)),
        ("inspect", None),
        ("ocr_api", StepLimits(max_per_window=10, window_ms=60_000)),
        ("thumbnail", StepLimits(max_concurrent=3)),
    )
    assert parse_step_limits(format_step_limits(parsed)) == parsed
    assert Settings.from_env({"OFFLOAD_STEP_LIMITS": text}).step_limits == parsed
    assert Settings.from_env({}).step_limits == ()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[1]", "JSON object"),
        ("{", "not JSON"),
        ('{"Thumbnail": {"maxConcurrent": 1}}', "must match"),
        ('{"a:b": {"maxConcurrent": 1}}', "must match"),
        ('{"t": 3}', "expected an object or null"),
        ('{"t": {}}', "give maxConcurrent, maxPerWindow or both"),
        ('{"t": {"windowMs": 10}}', "give maxConcurrent"),
        ('{"t": {"maxConcurrent": 1, "windowMs": 10}}', "windowMs needs maxPerWindow"),
        ('{"t": {"maxConcurrent": 0}}', "t.maxConcurrent must be an integer from 1"),
        ('{"t": {"maxConcurrent": 1.5}}', "t.maxConcurrent must be an integer"),
        ('{"t": {"maxConcurrent": true}}', "t.maxConcurrent must be an integer"),
        ('{"t": {"maxConcurrent": 100000}}', "from 1 to 10000"),
        ('{"t": {"maxPerWindow": 5, "windowMs": 0}}', "t.windowMs must be an integer"),
        ('{"t": {"maxPerWindow": 5, "windowMs": 86400001}}', "t.windowMs"),
        ('{"t": {"maxConcurrent": 1, "burst": 2}}', "unknown field"),
    ],
)
def test_a_bad_setting_is_refused_at_start_and_says_why(text, reason):
    with pytest.raises(SettingsError, match=f"OFFLOAD_STEP_LIMITS: .*{reason}"):
        Settings.from_env({"OFFLOAD_STEP_LIMITS": text})


def test_a_limited_step_gets_a_queue_of_its_own_under_the_same_prefix():
    settings = replace(
        Settings(),
        queue_name="uploads",
        step_limits=(("thumbnail", StepLimits(max_concurrent=2)), ("ocr", StepLimits(5))),
    )
    assert queue_for(settings, "thumbnail") == "uploads-thumbnail"
    assert queue_for(settings, "ocr") == "uploads-ocr"  # a step no pipeline declares
    assert queue_for(settings, INSPECT) == "uploads"
    assert queue_for(settings, "export") == "uploads"  # not a step at all
    assert all_queues(settings) == ("uploads", "uploads-ocr", "uploads-thumbnail")
    assert [step.name for step in limited_steps(settings)] == ["ocr", "thumbnail"]
    lifted = replace(settings, step_limits=(("thumbnail", None),))
    assert steps(lifted)["thumbnail"] == Step("thumbnail")
    assert all_queues(lifted) == ("uploads",)


# --- the process's job slots (no server) ------------------------------------------------------


def test_slots_are_handed_over_in_turn_and_never_exceeded():
    async def scenario() -> list[str]:
        slots = JobSlots(2)
        owner_a, owner_b = object(), object()
        order: list[str] = []
        assert await slots.acquire(owner_a) and await slots.acquire(owner_a)
        assert not slots.contended

        async def wait(label: str, owner: object) -> None:
            got = await slots.acquire(owner)
            order.append(f"{label}:{got}")

        first = asyncio.ensure_future(wait("b1", owner_b))
        second = asyncio.ensure_future(wait("a3", owner_a))
        third = asyncio.ensure_future(wait("b2", owner_b))
        await asyncio.sleep(0)
        assert slots.contended and slots.used == 2
        slots.release()  # straight to the first waiter
        await asyncio.sleep(0)
        assert order == ["b1:True"] and slots.used == 2
        slots.abandon(owner_a)  # a closing worker's waits end empty-handed
        await asyncio.sleep(0)
        assert order == ["b1:True", "a3:False"]
        third.cancel()  # a cancelled wait takes nothing
        await asyncio.gather(first, second, third, return_exceptions=True)
        assert not slots.contended
        slots.release()
        slots.release()
        assert slots.used == 0 and slots.peak == 2
        with pytest.raises(RuntimeError):
            slots.release()
        return order

    assert asyncio.run(scenario()) == ["b1:True", "a3:False"]


# --- workers ----------------------------------------------------------------------------------

CAP = 2
RATE = 4  # jobs per window
WINDOW_MS = 1000
LIMITS = (
    ("step_capped", StepLimits(max_concurrent=CAP)),
    ("step_rated", StepLimits(max_per_window=RATE, window_ms=WINDOW_MS)),
)


def _queue_meta(settings: Settings, queue_name: str) -> tuple[Any, Any]:
    async def read() -> tuple[Any, Any]:
        queue = open_queue(settings, queue_name)
        try:
            return await queue.getGlobalConcurrency(), await queue.getGlobalRateLimit()
        finally:
            await queue.close()

    return asyncio.run(read())


def test_each_worker_writes_the_step_limits_into_the_step_queues_at_start(settings):
    limited = replace(settings, step_limits=LIMITS)

    async def start_once(settings: Settings) -> None:
        async with running_worker(settings) as worker:
            assert list(worker.queues.workers) == list(all_queues(settings))

    asyncio.run(start_once(limited))
    main, capped, rated = all_queues(limited)
    assert (capped, rated) == (f"{main}-step_capped", f"{main}-step_rated")
    assert _queue_meta(limited, main) == (None, None)
    assert _queue_meta(limited, capped) == (CAP, None)
    assert _queue_meta(limited, rated) == (None, {"max": RATE, "duration": WINDOW_MS})

    # A changed setting is in force from the next start: a limit the step lost is removed.
    changed = replace(settings, step_limits=(("step_capped", StepLimits(max_per_window=9)),))
    asyncio.run(start_once(changed))
    assert _queue_meta(changed, capped) == (None, {"max": 9, "duration": 1000})


def _overlap_peak(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = running = 0
    for _, change in edges:  # an end sorts before a start at the same instant
        running += change
        peak = max(peak, running)
    return peak


@pytest.mark.slow
def test_two_worker_processes_keep_a_steps_cap_and_rate_and_their_own_budget(
    settings, tmp_path: Path
):
    """Two ``python -m fargate_worker`` processes of 5 slots each, against a backlog of a
    capped step (2 at once across all workers) and a rate-limited step (4 per second across all
    workers): the cap is reached and never exceeded, the rate is reached and never exceeded,
    and no process runs more than its 5 slots. A rated job lasts 1.5 s, so one process alone
    (5 slots: 3.3 starts a second) could not reach the rate: both have to take part."""
    concurrency = 5
    # A long drainDelay: a worker that slept through a free slot of the cap or a new window
    # of the rate would stand out by seconds.
    settings = replace(settings, step_limits=LIMITS, concurrency=concurrency, drain_delay_s=5)
    capped_jobs, rated_jobs = 10, 16

    async def scenario() -> list[dict[str, Any]]:
        ids: list[str] = []
        workers = [spawn_worker(settings, tmp_path / f"worker-{n}.log") for n in (1, 2)]
        try:
            async with producer(settings) as prod:
                # Written before any worker runs: the first worker to start applies the limits.
                await wait_for(
                    lambda: _limits_applied(prod, settings), timeout_s=30, interval_s=0.2
                )
                for n in range(capped_jobs):
                    ids.append(await add(prod, "step_capped", "0.6", bucket=f"c{n}"))
                for n in range(rated_jobs):
                    ids.append(await add(prod, "step_rated", "1.5", bucket=f"r{n}"))
                await wait_for(
                    lambda: all(
                        (row := job_row(settings, job_id)) and row["state"] == "completed"
                        for job_id in ids
                    ),
                    timeout_s=90,
                    interval_s=0.2,
                )
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                await asyncio.to_thread(worker.wait, 30)
        return [job_row(settings, job_id) for job_id in ids]

    rows = asyncio.run(scenario())
    by_name: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append(row)
    _, capped_queue, rated_queue = all_queues(settings)
    assert {row["queue"] for row in by_name["step_capped"]} == {capped_queue}
    assert {row["queue"] for row in by_name["step_rated"]} == {rated_queue}

    capped = [(row["result"]["start"], row["result"]["end"]) for row in by_name["step_capped"]]
    assert _overlap_peak(capped) == CAP  # reached, never exceeded
    # At the cap all along (10 jobs of 0.6 s, 2 at once: 3 s), not stalling in between.
    assert max(end for _, end in capped) - min(start for start, _ in capped) < 3.0 + 0.8

    starts = sorted(row["result"]["start"] for row in by_name["step_rated"])
    # 16 jobs at 4 per fixed 1 s window: 4 windows, the last one starting >= 3 s after the
    # first; reached, not only respected: a window left unused would add a second or more.
    span = starts[-1] - starts[0]
    windows = -(-rated_jobs // RATE) - 1
    assert windows * WINDOW_MS / 1000 - 0.15 <= span <= windows * WINDOW_MS / 1000 + 2.0, starts
    achieved = (rated_jobs - RATE) / span
    assert achieved <= RATE * 1.06, achieved
    assert len({row["worker_id"] for row in by_name["step_rated"]}) == 2

    for worker_id in {row["worker_id"] for row in rows}:
        mine = [
            (row["result"]["start"], row["result"]["end"])
            for row in rows
            if row["worker_id"] == worker_id
        ]
        assert _overlap_peak(mine) <= concurrency, worker_id


async def _limits_applied(prod: Any, settings: Settings) -> bool:
    _, capped, rated = all_queues(settings)
    return (
        await prod.queue_named(capped).getGlobalConcurrency() == CAP
        and await prod.queue_named(rated).getGlobalRateLimit() is not None
    )


# --- reconciler and queue metrics -------------------------------------------------------------


async def _lose(settings: Settings, queue_name: str, job_id: str) -> None:
    """Remove a job from Redis, as a failover that lost the newest writes would (as the
    server's admin under the ACL: no role of ours removes jobs)."""
    queue = open_queue(as_environment(settings), queue_name)
    try:
        assert await queue.remove(job_id) == 1
    finally:
        await queue.close()


def test_a_lost_step_job_is_put_back_into_its_step_queue(lambda_env, settings, monkeypatch):
    settings = replace(settings, step_limits=LIMITS)
    configure(monkeypatch, OFFLOAD_STEP_LIMITS=format_step_limits(LIMITS))
    _, capped_queue, _ = all_queues(settings)

    async def enqueue_and_lose() -> str:
        async with producer(settings) as prod:
            job_id = await add(prod, "step_capped", "0.1")
        await _lose(settings, capped_queue, job_id)
        return job_id

    job_id = asyncio.run(enqueue_and_lose())
    assert job_row(settings, job_id)["queue"] == capped_queue
    age_rows(settings, "jobs", settings.reconcile_after_s + 60)

    report = reconcile()
    assert (report["jobs_checked"], report["jobs_missing"], report["jobs_requeued"]) == (1, 1, 1)

    async def read_back() -> tuple[Any, Any]:
        async with producer(settings) as prod:
            job = await prod.queue_named(capped_queue).getJob(job_id)
            return job, await prod.queue.getJob(job_id)

    in_step_queue, in_main_queue = asyncio.run(read_back())
    assert in_step_queue is not None and in_main_queue is None
    assert in_step_queue.priority >= 1  # a job outside uploads: the last band, standard
    assert reconcile()["jobs_missing"] == 0


def test_a_step_queue_that_lost_its_limit_is_still_reconciled(lambda_env, settings, monkeypatch):
    """A row of a queue no longer configured is still looked at; a lost job of it goes back
    where its step runs now, and its row says so."""
    settings = replace(settings, step_limits=LIMITS)
    _, capped_queue, _ = all_queues(settings)

    async def enqueue_and_lose() -> str:
        async with producer(settings) as prod:
            job_id = await add(prod, "step_capped", "0.1")
        await _lose(settings, capped_queue, job_id)
        return job_id

    job_id = asyncio.run(enqueue_and_lose())
    age_rows(settings, "jobs", settings.reconcile_after_s + 60)
    report = reconcile()  # this Lambda's settings have no step limits
    assert report["jobs_requeued"] == 1
    row = job_row(settings, job_id)
    assert row["queue"] == settings.queue_name and row["state"] == "queued"


def test_queue_metrics_cover_every_queue_and_count_what_limits_let_run(
    lambda_env, settings, moto_endpoint, monkeypatch
):
    from lambdas import queue_metrics
    from tests.support.servers import unique_name

    settings = replace(
        settings,
        step_limits=LIMITS,
        metrics_namespace=unique_name("OffloadTest"),
        queue_name=unique_name("queue"),
    )
    configure(
        monkeypatch,
        OFFLOAD_STEP_LIMITS=format_step_limits(LIMITS),
        OFFLOAD_METRICS_NAMESPACE=settings.metrics_namespace,
        OFFLOAD_QUEUE_NAME=settings.queue_name,
        AWS_ENDPOINT_URL_CLOUDWATCH=moto_endpoint,
    )
    runtime.reset()
    main, capped, rated = all_queues(settings)

    async def backlog() -> None:
        async with producer(settings) as prod:
            for n in range(3):
                await add(prod, "timed", "1", bucket=f"m{n}", priority=2)
            for n in range(5):
                await add(prod, "step_capped", "1", bucket=f"c{n}", priority=1)
            for n in range(7):
                await add(prod, "step_rated", "1", bucket=f"r{n}")

    asyncio.run(backlog())
    try:
        result = queue_metrics.handler({}, FakeContext())
    finally:
        queue_metrics.close()
    waiting = {name: snap["waiting"] for name, snap in result["queues"].items()}
    assert waiting == {main: 3, capped: 5, rated: 7}
    assert result["waiting"] == 3  # the main queue's own, as before
    # main 3 + capped min(5, cap 2 - 0 active) + rated min(7, 4 per window)
    assert result["runnable"] == 3 + CAP + RATE
    assert result["queues"][capped]["oldest_waiting_age_s"] > 0  # prioritised jobs are seen

    import boto3

    cloudwatch = boto3.client("cloudwatch", endpoint_url=moto_endpoint, region_name="us-east-1")
    listed = cloudwatch.list_metrics(Namespace=settings.metrics_namespace)["Metrics"]
    published = {(m["MetricName"], m["Dimensions"][0]["Value"]) for m in listed}
    assert ("Runnable", main) in published
    assert {("Waiting", q) for q in (main, capped, rated)} <= published
    assert json.dumps(result)  # the handler's answer is plain JSON


def test_queue_metrics_as_emf_call_no_api(lambda_env, settings, moto_endpoint, monkeypatch, capsys):
    """OFFLOAD_METRICS_EMF (an environment without a route to CloudWatch's API): the same
    datapoints as EMF lines on stdout, one per queue, and nothing through PutMetricData."""
    from lambdas import queue_metrics
    from tests.support.servers import unique_name

    settings = replace(
        settings,
        step_limits=LIMITS,
        metrics_namespace=unique_name("OffloadTest"),
        queue_name=unique_name("queue"),
    )
    configure(
        monkeypatch,
        OFFLOAD_STEP_LIMITS=format_step_limits(LIMITS),
        OFFLOAD_METRICS_NAMESPACE=settings.metrics_namespace,
        OFFLOAD_QUEUE_NAME=settings.queue_name,
        OFFLOAD_METRICS_EMF="true",
        AWS_ENDPOINT_URL_CLOUDWATCH=moto_endpoint,
    )
    runtime.reset()
    main, capped, rated = all_queues(settings)

    async def backlog() -> None:
        async with producer(settings) as prod:
            for n in range(2):
                await add(prod, "timed", "1", bucket=f"m{n}")

    asyncio.run(backlog())
    capsys.readouterr()
    try:
        result = queue_metrics.handler({}, FakeContext())
    finally:
        queue_metrics.close()
    documents = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line
    ]
    by_queue = {doc["Queue"]: doc for doc in documents}
    assert set(by_queue) == {main, capped, rated}
    assert by_queue[main]["Waiting"] == 2 and by_queue[main]["Runnable"] == result["runnable"]
    for doc in documents:
        [directive] = doc["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == settings.metrics_namespace
        assert directive["Dimensions"] == [["Queue"]]
        names = {m["Name"] for m in directive["Metrics"]}
        assert {"Waiting", "Active", "Delayed", "Failed", "OldestWaitingAge"} <= names
    import boto3

    cloudwatch = boto3.client("cloudwatch", endpoint_url=moto_endpoint, region_name="us-east-1")
    assert cloudwatch.list_metrics(Namespace=settings.metrics_namespace)["Metrics"] == []


def test_a_capped_step_does_not_wait_for_a_drain_delay_when_its_worker_stops(settings):
    """bullmq-py gap 10 (docs/design.md): at its global concurrency, a step queue gets no marker
    when a job finishes, so a worker that found it full sleeps a whole drainDelay. Worker A
    runs the only allowed job; B finds the queue full and sleeps (10 s); A stops (a closing
    worker takes no next job): B must start the next job at once, not 10 s later."""
    cap_one = (("step_capped", StepLimits(max_concurrent=1)),)
    settings = replace(settings, step_limits=cap_one, concurrency=1, drain_delay_s=10)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with producer(settings) as prod:
            first = await add(prod, "step_capped", "1.0", bucket="first")
            second = await add(prod, "step_capped", "0.1", bucket="second")
            worker_a = running_worker(settings)
            a = await worker_a.__aenter__()
            try:
                await wait_for(lambda: job_row(settings, first)["state"] == "active")
                async with running_worker(settings) as b:
                    await asyncio.sleep(0.5)  # B has found the queue full and sleeps
                    assert job_row(settings, second)["state"] == "queued"
                    await worker_a.__aexit__(None, None, None)  # A finishes its job, stops
                    a = None
                    done = await wait_for(
                        lambda: (row := job_row(settings, second))["state"] == "completed" and row,
                        timeout_s=20,
                    )
                    assert done["worker_id"] == b.worker_id
            finally:
                if a is not None:
                    await worker_a.__aexit__(None, None, None)
            return job_row(settings, first), done

    first, second = asyncio.run(scenario())
    assert (second["started_at"] - first["finished_at"]).total_seconds() < 2.0


def test_a_worker_only_starts_jobs_within_its_slots_across_queues(settings):
    """In one process with 1 slot, a main-queue job and a step-queue job never run at once."""
    settings = replace(settings, step_limits=LIMITS, concurrency=1)

    async def scenario() -> list[dict[str, Any]]:
        async with producer(settings) as prod:
            ids = [await add(prod, "timed", "0.3", bucket=f"m{n}") for n in range(3)]
            ids += [await add(prod, "step_capped", "0.3", bucket=f"c{n}") for n in range(3)]
            async with running_worker(settings) as worker:
                await wait_for(
                    lambda: all(
                        (row := job_row(settings, job_id)) and row["state"] == "completed"
                        for job_id in ids
                    ),
                    timeout_s=30,
                )
                assert worker.queues.slots.peak == 1
        return [job_row(settings, job_id) for job_id in ids]

    rows = asyncio.run(scenario())
    intervals = [(row["result"]["start"], row["result"]["end"]) for row in rows]
    assert _overlap_peak(intervals) == 1
    assert {row["name"] for row in rows} == {"timed", "step_capped"}


def test_a_failed_step_job_is_retried_through_the_api_in_its_own_queue(
    lambda_env, settings, monkeypatch
):
    """POST /jobs/{id}/retry finds the job in the queue its row names (a step queue)."""
    limits = (("fail_until", StepLimits(max_concurrent=1)),)
    settings = replace(settings, step_limits=limits)
    configure(monkeypatch, OFFLOAD_STEP_LIMITS=format_step_limits(limits))
    ref = JobRef(bucket="bkt", key="2", owner="user-a", upload_id="up-step")  # fails attempt 1

    async def run(job_id: str | None, state: str) -> str:
        async with producer(settings) as prod:
            if job_id is None:
                job_id = await prod.enqueue("fail_until", ref, {"attempts": 1})
            async with running_worker(settings):
                await wait_for_state(settings, job_id, state, timeout_s=30)
        return job_id

    job_id = asyncio.run(run(None, "failed"))
    assert job_row(settings, job_id)["queue"] == f"{settings.queue_name}-fail_until"
    answer = call("POST", f"/jobs/{job_id}/retry")
    assert answer.status == 200, answer.body
    asyncio.run(run(job_id, "completed"))
    assert job_row(settings, job_id)["attempt"] == 2
