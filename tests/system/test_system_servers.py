"""Server faults in the whole system: Redis killed and restarted from its AOF, Redis flushed
(data loss, as after an ElastiCache failover to an empty replica), PostgreSQL stopped mid-run.
The stack runs on a Redis and a PostgreSQL of its own; the shared servers are never touched.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from offload.settings import Settings
from tests.support.local_stack import HttpAnswer, presigned_post, wait_until
from tests.support.system_checks import (
    Ledger,
    agreement_problems,
    completion_problems,
    final_count,
    rerun_figures,
    stuck_rows,
    wait_final,
)
from tests.support.system_flows import flow_figures, flow_job_count, flow_problems, read_flows
from tests.support.system_stack import SystemConfig, SystemRun

SLACK_S = 20.0  # on top of what the timings promise, for a loaded 2-core machine


@dataclass(frozen=True)
class Load:
    uploads: int
    test_jobs: int
    fault_at_fraction: float  # of the jobs final when the fault is injected
    config: SystemConfig


# CI: the reconciler every 3 s for rows older than 5 s (shipped: every 300 s, 600 s), worker
# locks and stalled checks of 2-3 s (shipped: 30 s); the event queue's visibility timeout of
# 10 s keeps a few-second outage under its 3 receives.
SERVERS_CI = Load(
    uploads=15,
    test_jobs=30,
    fault_at_fraction=0.2,
    config=SystemConfig(
        workers=2,
        concurrency=2,
        lock_duration_ms=3000,
        stalled_interval_ms=2000,
        max_stalled_count=1,
        reconciler_every_s=3,
        reconcile_after_s=5,
        visibility_timeout_s=10,
        env={"OFFLOAD_BACKOFF_MS": "200"},
    ),
)
SERVERS_LONG = Load(
    uploads=100,
    test_jobs=200,
    fault_at_fraction=0.2,
    config=SystemConfig(workers=2, concurrency=2, visibility_timeout_s=360),  # shipped timings
)


def _scale(long_run: bool) -> Load:
    return SERVERS_LONG if long_run else SERVERS_CI


def _submit(run: SystemRun, ledger: Ledger, load: Load) -> threading.Thread:
    """Test jobs (0.3-1.2 s of sleep) and uploads through the API, in the background."""
    specs = [("sleep", 0.3 + 0.3 * (i % 4)) for i in range(load.test_jobs)]

    def submit() -> None:
        ledger.add_test_jobs(run, specs)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: ledger.upload(run), range(load.uploads)))

    thread = threading.Thread(target=submit)
    thread.start()
    return thread


def _wait_fraction(run: SystemRun, load: Load) -> None:
    wanted = load.fault_at_fraction * (load.uploads + load.test_jobs)
    wait_until(lambda: final_count(run) >= wanted, 120, f"{wanted:.0f} jobs final")


def _check(
    run: SystemRun,
    ledger: Ledger,
    states,
    redis_lost: bool = False,
    reruns_allowed: bool = False,
) -> list[str]:
    """Both stores agree on every job, each completed as it should, nothing in flight, and
    each upload's flow ended ``processed`` (``tests.support.system_flows``)."""
    problems = agreement_problems(states, redis_lost)
    problems += completion_problems(states, ledger)
    problems += flow_problems(run, ledger, reruns_allowed=reruns_allowed, redis_lost=redis_lost)
    problems += [f"row in flight: {row}" for row in stuck_rows(run)]
    failing = _expected_failures(run, ledger)
    problems += [
        f"not completed: {s.describe()}"
        for s in states.values()
        if s.pg_state != "completed" and s.id not in failing
    ]
    problems += [
        f"expected failed: {states[j].describe()}"
        for j in failing
        if j in states and states[j].pg_state != "failed"
    ]
    expected = len(ledger.test_jobs) + flow_job_count(read_flows(run, ledger))
    if len(states) != expected:
        problems.append(f"{len(states)} jobs for {expected} submitted")
    return problems


def _expected_failures(run: SystemRun, ledger: Ledger) -> set[str]:
    """The jobs of the flows a test expects to fail: the failing step and its finalize."""
    flows = read_flows(run, ledger)
    return {
        row["id"]
        for upload_id, step in ledger.expect_failed.items()
        if upload_id in flows
        for row in (*flows[upload_id].parents, *flows[upload_id].steps)
        if row["name"] in ("finalize", step)
    }


def _recovery_bound(config: SystemConfig) -> float:
    """What the settings promise for a job Redis lost: its row is repaired once it is older
    than ``reconcile_after_s``, by the first reconciler run after that."""
    settings: Settings = config.settings
    return settings.reconcile_after_s + config.reconciler_every_s


@pytest.mark.timeout(600)
def test_redis_killed_and_restarted_from_its_aof_loses_nothing(system, long_run, tmp_path, figures):
    load = _scale(long_run)
    run = system(load.config)
    ledger = Ledger(tmp_path / "runs.log")
    submitter = _submit(run, ledger, load)
    _wait_fraction(run, load)
    run.redis.kill()
    killed_at = time.monotonic()
    during = [ledger.upload(run) for _ in range(3)]  # the API needs no Redis to take uploads
    wait_until(lambda: time.monotonic() - killed_at >= 3, 10, "3 s of outage")
    run.redis.start()
    restarted_at = time.monotonic()
    submitter.join(120)
    assert not submitter.is_alive(), "submitting hung"
    timeout_s = _recovery_bound(load.config) + 60 + SLACK_S
    states, problems = wait_final(run, ledger, timeout_s)
    recovered_s = time.monotonic() - restarted_at
    # everysec: the last second of writes before the kill may be lost, a move to completed
    # among them, and that job runs again (its status row has the completion already)
    problems += _check(run, ledger, states, reruns_allowed=load.config.appendfsync != "always")
    figures(
        {
            "outage_s": round(restarted_at - killed_at, 1),
            "all_final_after_restart_s": round(recovered_s, 1),
            "uploads_during_outage": len(during),
            "appendfsync": load.config.appendfsync,
            **rerun_figures(states, ledger),
            **flow_figures(run, ledger, states),
        }
    )
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])


def _flows(run: SystemRun, upload_ids: list[str]) -> dict[str, tuple[int, int]]:
    """Upload id -> (its job rows, how many of them are final)."""
    rows = run.sql(
        "SELECT upload_id, count(*) AS jobs, count(*) FILTER (WHERE state IN"
        " ('completed', 'failed')) AS final FROM jobs WHERE upload_id = ANY(%s)"
        " GROUP BY upload_id",
        (upload_ids,),
    )
    return {row["upload_id"]: (row["jobs"], row["final"]) for row in rows}


@pytest.mark.timeout(1800)
def test_redis_flushed_everything_is_recovered_by_the_reconciler(
    system, long_run, tmp_path, figures
):
    load = _scale(long_run)
    run = system(load.config)
    ledger = Ledger(tmp_path / "runs.log")
    submitter = _submit(run, ledger, load)
    _wait_fraction(run, load)
    submitter.join(120)
    assert not submitter.is_alive(), "submitting hung"
    # Jobs in flight at the flush however fast the machine is: with the suite running beside
    # it, every job submitted so far can be final by the time submitting ends. Four of these
    # twelve are still waiting in Redis (the stack has four slots) when it is flushed, and so
    # are the flows of three uploads started behind them (test jobs have no priority: bullmq
    # hands them out before every upload's prioritised ones), to be rebuilt as flows.
    ledger.add_test_jobs(run, [("sleep", 2.0)] * 12)
    late = [ledger.upload(run) for _ in range(3)]
    wait_until(
        lambda: (
            len(flows := _flows(run, late)) == len(late)
            and all(jobs >= 2 for jobs, _ in flows.values())
        ),
        60,
        "the late uploads' flows started",
    )
    in_flight_before = len(stuck_rows(run))
    assert in_flight_before > 0
    flows_in_flight = sum(final < jobs for jobs, final in _flows(run, late).values())
    run.redis.flushall()
    flushed_at = time.monotonic()
    bound_s = _recovery_bound(load.config)
    states, problems = wait_final(run, ledger, bound_s + 120 + SLACK_S, redis_lost=True)
    recovered_s = time.monotonic() - flushed_at
    problems += _check(run, ledger, states, redis_lost=True)
    requeued = run.sql(
        "SELECT count(DISTINCT job_id) AS n FROM job_events WHERE message LIKE 're-enqueued%%'"
    )[0]["n"]
    flows = flow_figures(run, ledger, states)
    settings = load.config.settings
    figures(
        {
            "rows_in_flight_at_flush": in_flight_before,
            "requeued_by_reconciler": requeued,
            "all_final_after_flush_s": round(recovered_s, 1),
            "reconciler_every_s": load.config.reconciler_every_s,
            "reconcile_after_s": settings.reconcile_after_s,
            "promised_s": bound_s,
            **rerun_figures(states, ledger),
            **flows,
        }
    )
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])
    assert requeued > 0, "the flush lost queued jobs: the reconciler must have put them back"
    # the late flows were still waiting behind the sleep jobs: Redis lost them with the rest
    assert flows_in_flight and flows["flows_requeued_by_reconciler"] > 0, flows_in_flight


@dataclass(frozen=True)
class Polled:
    started: float  # time.monotonic()
    answered: float
    answer: HttpAnswer


def _poll(run: SystemRun, stop: threading.Event, answers: list[Polled]) -> None:
    while not stop.is_set():
        started = time.monotonic()
        answer = run.api.call("GET", "/jobs?limit=20")
        answers.append(Polled(started, time.monotonic(), answer))
        stop.wait(0.25)


@pytest.mark.timeout(600)
def test_postgres_stopped_mid_run_loses_no_outcome_and_the_api_answers_503(
    system, long_run, tmp_path, figures
):
    load = _scale(long_run)
    config = load.config
    run = system(config)
    assert run.postgres is not None
    ledger = Ledger(tmp_path / "runs.log")
    # Uploads created now, their bytes sent while PostgreSQL is down (S3 needs no database).
    pending = []
    for index in range(3):
        data = f"late,{index}\n".encode() * 40
        created = run.api.call(
            "POST",
            "/uploads",
            {"filename": f"late-{index}.csv", "size": len(data), "contentType": "text/csv"},
        )
        assert created.status == 201, created.body
        pending.append((created.body, data))
    submitter = _submit(run, ledger, load)
    _wait_fraction(run, load)
    submitter.join(120)

    answers: list[Polled] = []
    stop = threading.Event()
    pollers = [threading.Thread(target=_poll, args=(run, stop, answers)) for _ in range(2)]
    for poller in pollers:
        poller.start()
    try:
        run.postgres.stop()
        stopped_at = time.monotonic()
        for created, data in pending:
            presigned_post(created["post"], created["filename"], data, "text/csv", pool=run.http)
            ledger.uploads[created["id"]] = data
        refused = run.api.call(
            "POST", "/uploads", {"filename": "x.csv", "size": 5, "contentType": "text/csv"}
        )
        # 8 s, and on until a poll asked during the outage was answered (each waits up to the
        # pool's 5 s for a connection: on a loaded machine, the first can take longer than 8 s)
        wait_until(
            lambda: (
                time.monotonic() - stopped_at >= 8 and any(p.started >= stopped_at for p in answers)
            ),
            60,
            "8 s of outage and an answer to a poll asked during it",
        )
        restarting_at = time.monotonic()
        run.postgres.start()
        back_at = time.monotonic()
        # Polled on for a while: each API container has a pool of its own to reconnect.
        wait_until(lambda: time.monotonic() - back_at >= 10, 20, "10 s of polls after the restart")
    finally:
        stop.set()
        for poller in pollers:
            poller.join(60)

    # Asked once PostgreSQL had exited and answered before it was started again: a request
    # asked earlier may have read its rows already and be answered late on a loaded machine, and
    # one that waits for a connection across the restart may be answered either way (PostgreSQL
    # takes connections a moment before start() returns).
    during = [p.answer for p in answers if stopped_at <= p.started and p.answered < restarting_at]
    after = [(p.started - back_at, p.answer.status) for p in answers if p.started >= back_at]
    first_ok = min((t for t, status in after if status == 200), default=None)
    # Two uploads whose flow fails for good (at thumbnail): the upload ends failed, naming it
    broken = [ledger.broken_image(run) for _ in range(2)]
    states, problems = wait_final(run, ledger, _recovery_bound(config) + 60 + SLACK_S)
    problems += _check(run, ledger, states)
    problems += [
        f"during the outage: {a.status} {a.body!r}"
        for a in during
        if a.status != 503 or not isinstance(a.body, dict) or "message" not in a.body
    ]
    if refused.status != 503 or "message" not in (refused.body or {}):
        problems.append(f"POST /uploads during the outage: {refused.status} {refused.body!r}")
    problems += [
        f"{s} at {t:.1f}s after PostgreSQL was back" for t, s in after if s != 200 and t > 2.0
    ]
    figures(
        {
            "outage_s": round(back_at - stopped_at, 1),
            "answers_during_outage": len(during),
            "statuses_during_outage": sorted({a.status for a in during}),
            "first_200_after_back_s": None if first_ok is None else round(first_ok, 2),
            "uploads_failed_as_expected": len(broken),
            **rerun_figures(states, ledger),
            **flow_figures(run, ledger, states),
        }
    )
    assert during, "the API was not polled while PostgreSQL was down"
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])
