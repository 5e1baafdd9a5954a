"""Queue throughput: no-op jobs through OffloadWorker vs a bare bullmq Worker, same run.

    python bench/queue_throughput.py [--jobs 10000] [--concurrency 8] [--rounds 2]

Both sides get the same queue options, Redis connection options
(``offload.redis_conn.settings_connection_options``), worker options (``worker_options(settings)``),
concurrency and job options (``removeOnComplete``, deterministic job ids). The difference is
what a job costs on our side: a sandbox child runs the ``noop`` processor, and the status row
is written to PostgreSQL (active + completed, each with its event row) before bullmq moves the
job, plus the per-job JSON logs and EMF metric line the production worker prints.

Each round uses a fresh queue under this run's own hash-tagged Redis prefix (``{bench_...}``)
and this run's own migrated PostgreSQL schema; both are removed at the end. A round:
1. start the worker on a paused queue and push ``--warmup`` jobs through it (sandbox children
   started and warm, PostgreSQL pool and Redis connections open);
2. pause the queue, add ``--jobs`` jobs with ``addBulk`` (chunks), untimed;
3. timed: resume the queue and wait until the worker has emitted ``completed`` N times.
Rounds alternate baseline / ours; the ratio is median(ours) / median(baseline).

``--parts`` adds two rounds per round, each a bare bullmq Worker with one of our per-job costs:
``status`` (the processor writes the active and completed rows, as OffloadWorker does) and
``sandbox`` (the no-op runs in a sandbox child). They show where the gap to the baseline goes.

A second table says where each job's CPU went in the timed section, in ms per job: the
worker process (event loop: bullmq, psycopg, sandbox pipes), its descendants (fork server and
sandbox children), the PostgreSQL and Redis servers; and what the machine's cores, all busy
all the time, could give each job at the target rate. A worker whose jobs need more CPU than
that cannot meet the target on this machine, however its work is arranged.

Worker logs and EMF lines go to ``--worker-output`` (default: /dev/null) at ``--log-level``
(default INFO, as in production), so their formatting cost is measured without flooding the
terminal. Environment: REDIS_URL, DATABASE_URL (defaults as in tests/support/servers.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.machinery
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: repo root

import psycopg
import redis.asyncio as aioredis
from bullmq import Queue, Worker

from fargate_worker.sandbox import SandboxPool
from fargate_worker.worker import OffloadWorker, worker_options
from offload.db import schema_options
from offload.db.pool import create_pool
from offload.db.status import JobIdentity, StatusStore
from offload.jobs import JobRef, job_id
from offload.logs import JsonFormatter
from offload.redis_conn import settings_connection_options
from offload.settings import Settings
from tests.support import servers

JOB_NAME = "noop"
PROCESSOR_MODULES = ("tests.support.processors",)
TARGET_RATIO = 0.7
PARTS = ("status", "sandbox")


CPU_GROUPS = ("worker", "sandbox", "postgres", "redis")


def cpu_sample() -> dict[str, float]:
    """CPU seconds used so far, by who uses them: this process (the worker's event loop:
    bullmq, psycopg, sandbox pipes), its descendants (the fork server and sandbox children,
    including children already reaped) and the PostgreSQL and Redis servers (every process of
    theirs). Differences of two samples show where a round's CPU went on the shared cores."""
    import psutil

    def used(proc: psutil.Process, reaped: bool = False) -> float:
        times = proc.cpu_times()
        total = times.user + times.system
        if reaped:
            total += times.children_user + times.children_system
        return total

    sample = dict.fromkeys(CPU_GROUPS, 0.0)
    me = psutil.Process()
    sample["worker"] = used(me)
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):  # a child that exited meanwhile
            sample["sandbox"] += used(child, reaped=True)
    for proc in psutil.process_iter(["name"]):
        name = proc.info["name"] or ""
        group = "postgres" if name.startswith("postgres") else "redis" if "redis" in name else None
        if group:
            with contextlib.suppress(psutil.NoSuchProcess):
                sample[group] += used(proc)
    return sample


@dataclass
class RoundResult:
    kind: str
    jobs: int
    seconds: float
    cpu: dict[str, float]  # CPU seconds by CPU_GROUPS
    extra: dict[str, Any] = field(default_factory=dict)

    def cpu_ms_per_job(self, group: str) -> float:
        return 1000 * self.cpu.get(group, 0.0) / self.jobs

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds

    @property
    def cpu_percent(self) -> float:
        """The worker process only (event loop + bullmq + psycopg), not its children."""
        return 100 * self.cpu["worker"] / self.seconds


class Completions:
    """Counts a worker's ``completed`` events; wakes the bench when ``target`` is reached."""

    def __init__(self) -> None:
        self.count = 0
        self.failed = 0
        self.target = 0
        self.reached = asyncio.Event()

    def expect(self, target: int) -> None:
        self.count = 0
        self.failed = 0
        self.target = target
        self.reached.clear()

    def on_completed(self, *_: Any) -> None:
        self.count += 1
        if self.count >= self.target:
            self.reached.set()

    def on_failed(self, job: Any, error: Any, *_: Any) -> None:
        self.failed += 1
        self.reached.set()  # stop waiting: the round is invalid
        print(f"job {job.id} failed: {error}", file=sys.stderr)


def bench_settings(args: argparse.Namespace, schema: str, prefix: str, queue: str) -> Settings:
    return Settings(
        redis_url=servers.redis_url(),
        database_url=servers.database_url(),
        database_schema=schema,
        queue_name=queue,
        queue_prefix=prefix,
        concurrency=args.concurrency,
        processor_modules=PROCESSOR_MODULES,
        sandbox_max_jobs=args.sandbox_max_jobs,
        remove_on_complete=True,
        health_file=f"/tmp/offload-bench-{os.getpid()}.health",
    )


def job_options(settings: Settings, ref: JobRef) -> dict[str, Any]:
    return {
        **settings.default_job_options(),
        "removeOnComplete": True,
        "jobId": job_id(JOB_NAME, ref),
    }


async def add_jobs(queue: Queue, settings: Settings, keys: list[str], chunk: int) -> None:
    for start in range(0, len(keys), chunk):
        batch = []
        for key in keys[start : start + chunk]:
            ref = JobRef(bucket="bench", key=key)
            batch.append(
                {"name": JOB_NAME, "data": ref.to_data(), "opts": job_options(settings, ref)}
            )
        await queue.addBulk(batch)


async def wait_done(done: Completions, timeout_s: float, what: str) -> None:
    try:
        await asyncio.wait_for(done.reached.wait(), timeout_s)
    except TimeoutError:
        raise RuntimeError(
            f"{what}: only {done.count}/{done.target} jobs completed within {timeout_s:.0f}s"
        ) from None
    if done.failed:
        raise RuntimeError(f"{what}: {done.failed} jobs failed")


Processor = Callable[[Any, str], Awaitable[Any]]


async def noop(job: Any, token: str) -> dict:
    return {"ok": True}


async def start_bare(
    settings: Settings, done: Completions, process: Processor = noop
) -> Callable[[], Awaitable[None]]:
    worker = Worker(settings.queue_name, process, worker_options(settings))
    # The same connection-level fix OffloadWorker applies (bullmq-py gap 2, docs/design.md).
    await worker.backend.connection.getRedisVersion()
    if worker.backend.blocking_connection is not None:
        await worker.backend.blocking_connection.getRedisVersion()
    worker.on("completed", done.on_completed)
    worker.on("failed", done.on_failed)
    run_task = asyncio.ensure_future(worker.run())

    async def stop() -> None:
        await worker.close()
        await asyncio.gather(run_task, return_exceptions=True)

    return stop


async def start_part(
    kind: str, settings: Settings, done: Completions
) -> Callable[[], Awaitable[None]]:
    """A bare Worker paying one of OffloadWorker's per-job costs (see ``--parts``)."""
    if kind == "status":
        pool = create_pool(
            settings.database_url, settings.database_schema, max_size=settings.concurrency + 1
        )
        await pool.open(wait=True)
        store = StatusStore(pool)

        async def write_status(job: Any, token: str) -> dict:
            identity = JobIdentity(
                job.id, job.name, settings.queue_name, JobRef.from_data(job.data)
            )
            await store.mark_active(identity, 1, 1, "bench")
            await store.mark_completed(job.id, 1, {"ok": True})
            return {"ok": True}

        stop_worker = await start_bare(settings, done, write_status)
        close_part = pool.close
    else:
        sandbox = SandboxPool(settings, settings.concurrency)
        await sandbox.start()

        async def in_sandbox(job: Any, token: str) -> Any:
            return await sandbox.run(job.id, job.name, 1, job.data, 60, lambda _: None)

        stop_worker = await start_bare(settings, done, in_sandbox)
        close_part = sandbox.close

    async def stop() -> None:
        await stop_worker()
        await close_part()

    return stop


async def start_ours(
    settings: Settings, done: Completions, sink: TextIO
) -> Callable[[], Awaitable[None]]:
    worker = OffloadWorker(settings, worker_id="bench")
    worker.metrics.stream = sink  # EMF lines: same formatting and write, not on the terminal
    await worker.start()  # sandbox children are started (and ready) before bullmq runs
    assert worker.bull is not None
    worker.bull.on("completed", done.on_completed)
    worker.bull.on("failed", done.on_failed)

    async def stop() -> None:
        await worker.shutdown(grace_s=30)

    return stop


async def run_round(
    kind: str, index: int, args: argparse.Namespace, schema: str, prefix: str, sink: TextIO
) -> RoundResult:
    settings = bench_settings(args, schema, prefix, f"{kind}-{index}")
    queue = Queue(
        settings.queue_name,
        {
            "connection": settings_connection_options(settings),
            "prefix": settings.queue_prefix,
        },
    )
    done = Completions()
    stop: Callable[[], Awaitable[None]] | None = None
    try:
        await queue.pause()
        if kind == "ours":
            stop = await start_ours(settings, done, sink)
        elif kind == "baseline":
            stop = await start_bare(settings, done)
        else:
            stop = await start_part(kind, settings, done)

        # Warm-up: children, connection pools and code paths all used once before timing.
        warmup = max(args.warmup, 0)
        if warmup:
            done.expect(warmup)
            await add_jobs(queue, settings, [f"w{i}" for i in range(warmup)], args.chunk)
            await queue.resume()
            await wait_done(done, 120, f"{kind} warm-up")
            await queue.pause()

        await add_jobs(queue, settings, [f"k{i}" for i in range(args.jobs)], args.chunk)
        counts = await queue.getJobCounts("paused", "wait")
        assert counts["paused"] + counts["wait"] == args.jobs, counts
        await asyncio.sleep(0.2)  # let the worker settle into its blocking wait

        done.expect(args.jobs)
        groups0 = cpu_sample()
        t0 = time.perf_counter()
        await queue.resume()
        await wait_done(done, args.timeout, kind)
        seconds = time.perf_counter() - t0
        groups1 = cpu_sample()
        cpu = {group: groups1[group] - groups0[group] for group in CPU_GROUPS}

        left = await queue.getJobCounts("wait", "paused", "active", "delayed", "failed")
        if any(left.values()):
            raise RuntimeError(f"{kind}: jobs left in the queue after the round: {left}")
        extra: dict[str, Any] = {}
        if kind in ("ours", "status"):
            extra = check_status_rows(settings, args.jobs + warmup)
        return RoundResult(kind, args.jobs, seconds, cpu, extra)
    finally:
        if stop is not None:
            await stop()
        await queue.obliterate(force=True)
        await queue.close()


def check_status_rows(settings: Settings, expected: int) -> dict[str, Any]:
    """Every job has its completed row and its active + completed events; then empty the
    tables so each round of ours starts from the same (empty) tables."""
    with psycopg.connect(
        settings.database_url, autocommit=True, options=schema_options(settings.database_schema)
    ) as conn:
        completed = conn.execute("SELECT count(*) FROM jobs WHERE state = 'completed'").fetchone()
        events = conn.execute("SELECT count(*) FROM job_events").fetchone()
        conn.execute("TRUNCATE jobs, job_events")
    assert completed is not None and events is not None
    if completed[0] != expected or events[0] != 2 * expected:
        raise RuntimeError(
            f"status rows: {completed[0]} completed (want {expected}), "
            f"{events[0]} events (want {2 * expected})"
        )
    return {"rows": completed[0], "events": events[0]}


async def delete_prefix(prefix: str) -> None:
    client = aioredis.Redis.from_url(servers.redis_url())
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
    finally:
        await client.aclose()


def configure_worker_logging(level: str, sink: TextIO) -> None:
    """What offload.logs.configure_logging does in production, but into ``sink``."""
    handler = logging.StreamHandler(sink)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


async def bench(args: argparse.Namespace, schema: str, prefix: str, sink: TextIO) -> int:
    kinds = {"both": ("baseline", "ours"), "baseline": ("baseline",), "ours": ("ours",)}[args.only]
    if args.parts:
        kinds = (*kinds, *PARTS)
    results: list[RoundResult] = []
    load_before = os.getloadavg()[0]
    try:
        for index in range(1, args.rounds + 1):
            for kind in kinds:
                result = await run_round(kind, index, args, schema, prefix, sink)
                results.append(result)
                print(
                    f"  round {index} {kind:<8} {result.jobs_per_s:8.0f} jobs/s "
                    f"({result.seconds:.2f} s, parent CPU {result.cpu_percent:.0f}%)",
                    flush=True,
                )
    finally:
        await delete_prefix(prefix)
    report(args, results, (load_before, os.getloadavg()[0]))
    return 0


def report(args: argparse.Namespace, results: list[RoundResult], load: tuple[float, float]) -> None:
    def rates(kind: str) -> list[float]:
        return [r.jobs_per_s for r in results if r.kind == kind]

    def cpu(kind: str) -> float:
        return statistics.median([r.cpu_percent for r in results if r.kind == kind])

    print()
    print(
        f"queue throughput: {args.jobs} no-op jobs, concurrency {args.concurrency}, "
        f"sandbox_max_jobs {args.sandbox_max_jobs}, log level {args.log_level}, "
        f"{args.rounds} round(s), {os.cpu_count()} CPUs, "
        f"load average {load[0]:.1f} -> {load[1]:.1f}"
    )
    header = f"{'worker':<34} {'median/s':>9} {'best/s':>9} {'worst/s':>9} {'parent CPU':>11}"
    print(header)
    print("-" * len(header))
    labels = {
        "baseline": "bare bullmq Worker (async no-op)",
        "ours": "OffloadWorker (sandbox + status)",
        "status": "  part: bare + status rows",
        "sandbox": "  part: bare + sandbox child",
    }
    medians: dict[str, float] = {}
    for kind in labels:
        values = rates(kind)
        if not values:
            continue
        medians[kind] = statistics.median(values)
        print(
            f"{labels[kind]:<34} {medians[kind]:9.0f} {max(values):9.0f} {min(values):9.0f} "
            f"{cpu(kind):10.0f}%"
        )
    baseline = medians.get("baseline", float("nan"))
    ours = medians.get("ours", float("nan"))
    ratio = ours / baseline if baseline else float("nan")
    if "baseline" in medians and "ours" in medians:
        best = max(rates("ours")) / max(rates("baseline"))
        verdict = "meets" if ratio >= TARGET_RATIO else "BELOW"
        print(
            f"ratio ours/baseline: {ratio:.3f} (median), {best:.3f} (best); "
            f"{verdict} the {TARGET_RATIO} target"
        )
    print_cpu_table(results, labels, baseline)
    parts = ""
    for kind in PARTS:
        if kind in medians and baseline:
            print(f"ratio {kind} part/baseline: {medians[kind] / baseline:.3f} (median)")
            parts += f" {kind}_part_ratio={medians[kind] / baseline:.3f}"
    print(
        f"RESULT jobs={args.jobs} concurrency={args.concurrency} "
        f"baseline_jobs_per_s={baseline:.1f} offload_jobs_per_s={ours:.1f} ratio={ratio:.3f}"
        + parts
    )


def print_cpu_table(results: list[RoundResult], labels: dict[str, str], baseline: float) -> None:
    """Where each job's CPU goes, in ms per job (median over rounds), and what the machine
    could give a worker that meets the target: all its cores, busy all the time, shared by
    every process of the run."""
    print()
    columns = (*CPU_GROUPS, "total")
    header = f"{'CPU ms per job':<34}" + "".join(f"{column:>10}" for column in columns)
    print(header)
    print("-" * len(header))
    for kind, label in labels.items():
        rounds = [r for r in results if r.kind == kind]
        if rounds:
            figures = [statistics.median(r.cpu_ms_per_job(g) for r in rounds) for g in CPU_GROUPS]
            print(f"{label:<34}" + "".join(f"{value:10.3f}" for value in (*figures, sum(figures))))
    if not math.isnan(baseline) and baseline > 0:  # the baseline ran
        target_rate = TARGET_RATIO * baseline
        budget_ms = 1000 * (os.cpu_count() or 1) / target_rate
        print(
            f"at the target ({TARGET_RATIO} x {baseline:.0f} = {target_rate:.0f} jobs/s) the "
            f"{os.cpu_count()} CPUs have {budget_ms:.3f} ms of CPU per job in all, "
            "busy 100 % of the time, for every process above"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="timed jobs per round")
    parser.add_argument("--concurrency", type=int, default=8, help="jobs in flight per worker")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each worker")
    parser.add_argument(
        "--sandbox-max-jobs",
        type=int,
        default=Settings().sandbox_max_jobs,
        help="jobs per sandbox child before it is recycled (default: the production default)",
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed jobs (4 x concurrency)")
    parser.add_argument("--chunk", type=int, default=1000, help="jobs per addBulk call")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per timed round")
    parser.add_argument("--only", choices=("both", "baseline", "ours"), default="both")
    parser.add_argument(
        "--parts", action="store_true", help="also time bare + status rows, bare + sandbox"
    )
    parser.add_argument("--log-level", default="INFO", help="worker log level (production: INFO)")
    parser.add_argument("--worker-output", default=os.devnull, help="where worker logs/EMF go")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.concurrency < 1 or args.rounds < 1 or args.sandbox_max_jobs < 1:
        parser.error("--jobs, --concurrency, --rounds and --sandbox-max-jobs must be >= 1")
    if args.warmup is None:
        args.warmup = 4 * args.concurrency
    if args.timeout is None:
        args.timeout = max(120.0, args.jobs / 20)
    return args


def spawn_children_like_production() -> None:
    """Production runs ``python -m fargate_worker``, and multiprocessing's spawn never
    re-imports a main module named ``*.__main__`` in the children. Run as a script, this file
    would be re-imported (bullmq, psycopg, redis: ~0.4 CPU-s) by every sandbox child, making
    each child start ~3x dearer than in production. Give __main__ the spec production has."""
    sys.modules["__main__"].__spec__ = importlib.machinery.ModuleSpec("bench.__main__", None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spawn_children_like_production()
    prefix = "{" + servers.unique_name("bench") + "}"
    with open(args.worker_output, "a") as sink, servers.pg_schema() as schema:
        configure_worker_logging(args.log_level, sink)
        print(f"redis prefix {prefix}, postgres schema {schema}", flush=True)
        try:
            return asyncio.run(bench(args, schema, prefix, sink))
        finally:
            Path(f"/tmp/offload-bench-{os.getpid()}.health").unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
