"""What a system test checks after a fault: the invariants of the pipeline, over the jobs and
uploads the scenario made (its ``Ledger``), read from both stores, S3 and the processors' own
log of their runs.

Each check returns a list of problems (empty: the invariant holds), so that a failing test
names every job that breaks it, not only the first.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offload.jobs import JobRef
from offload.queue import open_queue
from offload.step_limits import all_queues
from tests.support.system_stack import SystemRun, run_async

FINAL = ("completed", "failed")
IN_FLIGHT = ("queued", "active", "retrying")
STALL_REASON = "job stalled more than allowable limit"  # bullmq's moveStalledJobsToWait


@dataclass
class JobState:
    """One job as PostgreSQL (the status row and its events) and Redis (bullmq) see it."""

    id: str
    name: str | None = None
    upload_id: str | None = None
    pg_state: str | None = None
    pg_attempt: int | None = None
    pg_error: str | None = None
    pg_result: Any = None
    completed_events: int = 0
    redis_state: str | None = None  # None: the queue does not have the job
    attempts_started: int = 0
    attempts_made: int = 0
    failed_reason: str | None = None

    def final(self, redis_lost: bool = False) -> bool:
        """Final in both stores; with ``redis_lost`` (after Redis lost data) a job Redis no
        longer has counts as final when its row is: the row is the source of truth."""
        in_redis = self.redis_state in FINAL or (redis_lost and self.redis_state is None)
        return self.pg_state in FINAL and in_redis

    @property
    def stall_failed(self) -> bool:
        return self.redis_state == "failed" and self.failed_reason == STALL_REASON

    def describe(self) -> str:
        return (
            f"{self.id}: postgres {self.pg_state} attempt {self.pg_attempt} "
            f"error {self.pg_error!r}; redis {self.redis_state} started {self.attempts_started} "
            f"made {self.attempts_made} reason {self.failed_reason!r}"
        )


@dataclass
class Run:
    """One run of a ``logged`` test job, from its start and done lines."""

    job_id: str
    attempt: int
    pid: int
    started: float
    done: float | None = None


@dataclass
class Ledger:
    """The jobs and uploads a scenario made, and the file its test jobs log their runs to."""

    runs_log: Path
    test_jobs: list[str] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)  # upload id -> the bytes sent
    # upload id -> the step its flow is expected to fail at; every other upload must end
    # processed (tests.support.system_flows)
    expect_failed: dict[str, str] = field(default_factory=dict)
    _counter: int = 0

    def logged_refs(self, specs: list[tuple[str, float]], owner: str) -> list[tuple[str, JobRef]]:
        """``logged`` jobs (kind "sleep" or "cpu", seconds) owned by ``owner``, so that the API
        shows them and ``POST /jobs/{id}/retry`` accepts them."""
        refs = []
        for kind, seconds in specs:
            self._counter += 1
            key = f"{kind}/{seconds:g}/{self._counter}"
            refs.append(("logged", JobRef(bucket=str(self.runs_log), key=key, owner=owner)))
        return refs

    def add_test_jobs(self, run: SystemRun, specs: list[tuple[str, float]]) -> list[str]:
        assert run.info is not None
        ids = run.add_jobs(self.logged_refs(specs, run.info.user_sub))
        self.test_jobs += ids
        return ids

    def upload(self, run: SystemRun, size: int = 600) -> str:
        data = (f"row,{len(self.uploads)},{time.time()}\n" * (size // 24 + 1)).encode()[:size]
        upload_id = run.upload(data, f"rows-{len(self.uploads)}.csv")
        self.uploads[upload_id] = data
        return upload_id

    def broken_image(self, run: SystemRun) -> str:
        """An upload whose first bytes are a PNG's signature and the rest garbage: the enqueue
        path detects an image (the image pipeline), ``inspect`` completes and ``thumbnail``
        fails for good (not decodable), so the flow fails at ``thumbnail``."""
        data = b"\x89PNG\r\n\x1a\n" + f"not an image {len(self.uploads)} ".encode() * 20
        upload_id = run.upload(data, f"broken-{len(self.uploads)}.png", "image/png")
        self.uploads[upload_id] = data
        self.expect_failed[upload_id] = "thumbnail"
        return upload_id

    def upload_jobs(self, run: SystemRun) -> dict[str, list[str]]:
        """Upload id -> its job ids, as PostgreSQL has them."""
        jobs: dict[str, list[str]] = {upload_id: [] for upload_id in self.uploads}
        if self.uploads:
            for row in run.sql(
                "SELECT id, upload_id FROM jobs WHERE upload_id = ANY(%s)", (list(self.uploads),)
            ):
                jobs[row["upload_id"]].append(row["id"])
        return jobs

    def job_ids(self, run: SystemRun) -> list[str]:
        return self.test_jobs + [j for ids in self.upload_jobs(run).values() for j in ids]

    def unfinished_uploads(self, run: SystemRun) -> dict[str, str]:
        """Upload id -> state, for the uploads not yet in a final state (processed, failed):
        the flow's ``finalize`` (or the failure of a step) has not ended them."""
        if not self.uploads:
            return {}
        return {
            row["id"]: row["state"]
            for row in run.sql(
                "SELECT id, state FROM uploads WHERE id = ANY(%s)"
                " AND state NOT IN ('processed', 'failed')",
                (list(self.uploads),),
            )
        }

    def runs(self) -> dict[str, list[Run]]:
        return read_runs(self.runs_log)


def read_runs(path: Path) -> dict[str, list[Run]]:
    runs: dict[str, list[Run]] = defaultdict(list)
    if not path.exists():
        return runs
    open_runs: dict[tuple[str, int, int], Run] = {}
    for line in path.read_text().splitlines():
        what, job_id, attempt, pid, at = line.split()
        key = (job_id, int(attempt), int(pid))
        if what == "start":
            open_runs[key] = Run(job_id, int(attempt), int(pid), float(at))
            runs[job_id].append(open_runs[key])
        elif key in open_runs:
            open_runs.pop(key).done = float(at)
    return runs


def job_states(run: SystemRun, job_ids: list[str]) -> dict[str, JobState]:
    states = {job_id: JobState(job_id) for job_id in job_ids}
    queues: dict[str, str] = {}
    if not job_ids:
        return states
    for row in run.sql(
        "SELECT j.id, j.name, j.queue, j.upload_id, j.state, j.attempt, j.error_message, j.result,"
        " (SELECT count(*) FROM job_events e WHERE e.job_id = j.id AND e.state = 'completed')"
        " AS completed_events FROM jobs j WHERE j.id = ANY(%s)",
        (job_ids,),
    ):
        state = states[row["id"]]
        state.name, state.upload_id = row["name"], row["upload_id"]
        state.pg_state, state.pg_attempt = row["state"], row["attempt"]
        state.pg_error, state.pg_result = row["error_message"], row["result"]
        state.completed_events = row["completed_events"]
        queues[row["id"]] = row["queue"]

    async def read_queue() -> None:
        # each job in the queue its row names: the main queue or a step queue
        opened = {name: open_queue(run.settings, name) for name in set(queues.values())}
        main = opened.get(run.settings.queue_name) or open_queue(run.settings)
        opened[run.settings.queue_name] = main
        try:
            for job_id, state in states.items():
                queue = opened[queues.get(job_id, run.settings.queue_name)]
                redis_state = await queue.getJobState(job_id)
                job = await queue.getJob(job_id)
                if job is None or redis_state == "unknown":
                    continue
                state.redis_state = redis_state
                state.attempts_started = int(getattr(job, "attemptsStarted", 0) or 0)
                state.attempts_made = int(job.attemptsMade or 0)
                state.failed_reason = job.failedReason
        finally:
            for queue in opened.values():
                await queue.close()

    run_async(read_queue())
    return states


def not_final(states: dict[str, JobState], redis_lost: bool = False) -> list[JobState]:
    return [state for state in states.values() if not state.final(redis_lost)]


def wait_final(
    run: SystemRun,
    ledger: Ledger,
    timeout_s: float,
    idle_s: float | None = None,
    redis_lost: bool = False,
) -> tuple[dict[str, JobState], list[str]]:
    """Until every job of the ledger is final in both stores and every upload is in a final
    state (its flow ended it), or ``timeout_s``; returns the states and a problem per job not
    final by then (with what each store says) and per upload not final. With ``idle_s``, gives
    up early once nothing has changed for that long while the queue has no work left: nothing
    but the reconciler could change anything then (scenarios that rely on it leave ``idle_s``
    unset)."""
    deadline = time.monotonic() + timeout_s
    last_change, last_seen = time.monotonic(), None
    while True:
        unfinished = ledger.unfinished_uploads(run)
        states = job_states(run, ledger.job_ids(run))
        stuck = not_final(states, redis_lost)
        if (not stuck and not unfinished) or time.monotonic() > deadline:
            break
        seen = {(s.id, s.pg_state, s.redis_state, s.pg_attempt) for s in stuck}
        seen |= {(u, state, None, None) for u, state in unfinished.items()}
        if seen != last_seen:
            last_change, last_seen = time.monotonic(), seen
        elif idle_s is not None and time.monotonic() - last_change > idle_s and queue_idle(run):
            break
        time.sleep(0.5)
    waited = f"{timeout_s:.0f}s" if time.monotonic() > deadline else "the queue went idle"
    problems = [f"not final after {waited}: {state.describe()}" for state in stuck]
    problems += [
        f"upload {upload_id} still {state} after {waited}"
        for upload_id, state in unfinished.items()
    ]
    return states, problems


def queue_idle(run: SystemRun) -> bool:
    """Nothing waiting, active, delayed or prioritized in any queue (the main one and each
    step queue), but for the schedulers' next jobs (``repeat:<id>:<millis>``, always delayed
    until their time: the workers keep one per schedule, fargate_worker/schedules.py)."""

    async def counts() -> list[int]:
        found: list[int] = []
        for name in all_queues(run.settings):
            queue = open_queue(run.settings, name)
            try:
                kinds = ("wait", "active", "prioritized", "paused")
                found += (await queue.getJobCounts(*kinds)).values()
                delayed = await queue.getJobs(["delayed"])
                found.append(sum(1 for job in delayed if not job.id.startswith("repeat:")))
            finally:
                await queue.close()
        return found

    return not any(run_async(counts()))


def final_count(run: SystemRun) -> int:
    """Jobs of the whole schema final in PostgreSQL (cheap: for progress while a fault runs)."""
    return run.sql("SELECT count(*) AS n FROM jobs WHERE state = ANY(%s)", (list(FINAL),))[0]["n"]


def agreement_problems(states: dict[str, JobState], redis_lost: bool = False) -> list[str]:
    """PostgreSQL agrees with Redis on each job: the same final state; a job the stall limit
    failed carries bullmq's reason in both; and the attempt the row shows is the one bullmq
    started last (comparable for every job whose last start reached our processor, that is
    every job but those failed by the stall limit, which bullmq fails without calling it).
    With ``redis_lost``, jobs Redis no longer has are left out (nothing to compare)."""
    problems = []
    for state in states.values():
        if redis_lost and state.redis_state is None:
            continue
        if state.pg_state != state.redis_state:
            problems.append(f"state differs: {state.describe()}")
        elif state.stall_failed and state.pg_error != STALL_REASON:
            problems.append(f"stall reason missing in postgres: {state.describe()}")
        elif not state.stall_failed and state.pg_attempt != state.attempts_started:
            problems.append(f"attempt differs: {state.describe()}")
    return problems


def completion_problems(states: dict[str, JobState], ledger: Ledger) -> list[str]:
    """No job ran to completion twice in effect: a completed job has its result and at least
    one completion event; a failed one none after its failure; a test job's runs that finished
    never overlapped in time (two live runs of one job: a zombie); every completed test job
    has a finished run. (A re-run after a kill between the status write and the queue's move
    records a second completion with the same result: re-runs are by design, counted by
    ``rerun_figures``.)"""
    problems = []
    runs = ledger.runs()
    for state in states.values():
        if state.pg_state == "completed" and (state.completed_events < 1 or not state.pg_result):
            problems.append(f"completed without its completion: {state.describe()}")
        job_runs = runs.get(state.id, [])
        test_job = state.id in ledger.test_jobs
        if test_job and state.pg_state == "completed" and not any(r.done for r in job_runs):
            problems.append(f"completed but no run finished: {state.describe()}")
        finished = sorted((r for r in job_runs if r.done), key=lambda r: r.started)
        for first, second in itertools.pairwise(finished):
            assert first.done is not None
            if second.started < first.done:
                problems.append(
                    f"{state.id}: runs overlapped (attempt {first.attempt} pid {first.pid} "
                    f"until {first.done:.3f}, attempt {second.attempt} pid {second.pid} "
                    f"from {second.started:.3f})"
                )
    return problems


def rerun_figures(states: dict[str, JobState], ledger: Ledger) -> dict[str, int]:
    runs = ledger.runs()
    test_states = [states[j] for j in ledger.test_jobs if j in states]
    return {
        "jobs": len(states),
        "completed": sum(s.pg_state == "completed" for s in states.values()),
        "failed": sum(s.pg_state == "failed" for s in states.values()),
        "stall_failed": sum(s.stall_failed for s in states.values()),
        "test_runs_started": sum(len(runs.get(s.id, [])) for s in test_states),
        "test_runs_finished": sum(
            sum(1 for r in runs.get(s.id, []) if r.done) for s in test_states
        ),
        "test_jobs": len(test_states),
        "completion_events": sum(s.completed_events for s in states.values()),
        "jobs_completed_more_than_once": sum(s.completed_events > 1 for s in states.values()),
    }


def stuck_rows(run: SystemRun) -> list[str]:
    """Rows of the whole schema still in flight."""
    return [
        f"{row['id']} {row['state']} attempt {row['attempt']}"
        for row in run.sql(
            "SELECT id, state, attempt FROM jobs WHERE state = ANY(%s) ORDER BY id",
            (list(IN_FLIGHT),),
        )
    ]


class AbandonedJobs:
    """Watches the queue's active list from outside: how long each job stayed there without a
    lock, that is abandoned by a dead worker and not yet recovered by a stalled-job check.
    bullmq checks every ``stalledInterval``: a job marked by one check whose lock is gone by the
    next is moved back to wait, so a live fleet recovers an abandoned job within two
    intervals of its lock expiring."""

    def __init__(self, run: SystemRun, every_s: float = 0.25):
        import redis

        assert run.info is not None
        queue = f"{run.info.queue_prefix}:{run.settings.queue_name}"
        self._active_key = f"{queue}:active"
        self._job_prefix = f"{queue}:"
        self._client = redis.Redis.from_url(run.info.redis_url, socket_timeout=5)
        self._every_s = every_s
        self._since: dict[str, float] = {}
        self.waits: list[tuple[str, float]] = []  # (job id, seconds without a lock)
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="abandoned-jobs", daemon=True)

    def __enter__(self) -> AbandonedJobs:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        now = time.monotonic()
        self.waits += [(job_id, now - since) for job_id, since in self._since.items()]
        self._client.close()

    @property
    def longest(self) -> tuple[str, float]:
        return max(self.waits, key=lambda wait: wait[1], default=("", 0.0))

    def _watch(self) -> None:
        import redis

        while not self._stop.wait(self._every_s):
            try:
                active = [i.decode() for i in self._client.lrange(self._active_key, 0, -1)]
                pipe = self._client.pipeline(transaction=False)
                for job_id in active:
                    pipe.exists(f"{self._job_prefix}{job_id}:lock")
                locked = pipe.execute()
            except redis.RedisError:
                self.errors += 1
                continue
            now = time.monotonic()
            lockless = {job_id for job_id, has in zip(active, locked, strict=True) if not has}
            for job_id in list(self._since):
                if job_id not in lockless:  # recovered (or finished)
                    self.waits.append((job_id, now - self._since.pop(job_id)))
            for job_id in lockless:
                self._since.setdefault(job_id, now)
