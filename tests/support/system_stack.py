"""The whole local stack as its own process tree (``python -m offload_local``) on a Redis and a
PostgreSQL of its own, driven from outside the way users and operators reach the real one: the
API with a Cognito ID token, presigned uploads over HTTP to the moto server, jobs added to the
queue with ``offload.queue.Producer``, signals to single workers, and servers that can be
killed, restarted, flushed or stopped. Shared by the system tests (``tests/system/``) and
``bench/system_load.py``.

The stack runs in its own process, not in the driver's: its gateway, SQS poller and schedules
get a process (and a CPU figure) of their own, and nothing the driver does competes with them
for a GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, TypeVar

import psutil
import psycopg
import urllib3
from psycopg.rows import dict_row

from offload.db import schema_options
from offload.jobs import JobRef
from offload.queue import producer
from offload.settings import Settings
from offload_local.stack import StackInfo
from tests.support.harness import REPO_ROOT, TEST_PROCESSORS
from tests.support.local_stack import NO_QUOTAS, ApiClient, presigned_post, wait_until
from tests.support.own_servers import (
    OwnPostgres,
    OwnRedis,
    marked_env,
    new_run_id,
    sweep,
)

T = TypeVar("T")
PROCESSOR_MODULES = f"{TEST_PROCESSORS},fargate_worker.processors.builtin"
STACK_START_TIMEOUT_S = 180.0
# The user_properties entry of a system test's report that holds its figures (JSON).
FIGURES_PROPERTY = "system-figures"
_WORKER_EXIT = re.compile(r"worker \d+ \(pid (\d+)\) exited with ([^;]+);")


@dataclass
class SystemConfig:
    """The stack's settings. None: the shipped setting (``offload.settings.Settings``, what the
    CDK app deploys). ``ci()`` shortens what fault tests wait on."""

    workers: int = 2
    concurrency: int = 2
    lock_duration_ms: int | None = None
    stalled_interval_ms: int | None = None
    max_stalled_count: int | None = None
    reconciler_every_s: float = 300.0  # stacks/api.py RECONCILER_SCHEDULE
    reconcile_after_s: int | None = None
    grace_s: float = 30.0
    restart_delay_s: float = 1.0
    visibility_timeout_s: int = 60
    appendfsync: str = "everysec"
    env: dict[str, str] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        """The worker/reconciler settings in effect (shipped defaults where not given)."""
        shipped = Settings()
        return replace(
            shipped,
            lock_duration_ms=self.lock_duration_ms or shipped.lock_duration_ms,
            stalled_interval_ms=self.stalled_interval_ms or shipped.stalled_interval_ms,
            max_stalled_count=(
                shipped.max_stalled_count
                if self.max_stalled_count is None
                else self.max_stalled_count
            ),
            reconcile_after_s=self.reconcile_after_s or shipped.reconcile_after_s,
            shutdown_grace_s=int(self.grace_s),
            concurrency=self.concurrency,
        )

    def cli_args(self) -> list[str]:
        args = [
            *("--workers", str(self.workers), "--concurrency", str(self.concurrency)),
            *("--reconciler-every", str(self.reconciler_every_s), "--grace", str(self.grace_s)),
            *("--restart-delay", str(self.restart_delay_s)),
            *("--events-visibility-timeout", str(self.visibility_timeout_s)),
        ]
        for flag, value in (
            ("--lock-duration-ms", self.lock_duration_ms),
            ("--stalled-interval-ms", self.stalled_interval_ms),
            ("--max-stalled-count", self.max_stalled_count),
            ("--reconcile-after", self.reconcile_after_s),
        ):
            if value is not None:
                args += [flag, str(value)]
        # One user sends the whole load, faster than a person would: no quota refuses it.
        env = {"OFFLOAD_PROCESSOR_MODULES": PROCESSOR_MODULES, **NO_QUOTAS, **self.env}
        for name, value in env.items():
            args += ["--env", f"{name}={value}"]
        return args


class SystemRun:
    """Own Redis (AOF), own PostgreSQL, and ``python -m offload_local`` on them. ``close()``
    stops everything, even after a failure, and returns what it had to kill by force."""

    def __init__(self, workdir: Path, config: SystemConfig):
        self.workdir = workdir
        self.config = config
        self.run_id = new_run_id()
        self.redis = OwnRedis(workdir / "redis", self.run_id, config.appendfsync)
        self.postgres: OwnPostgres | None = None
        self.stack_proc: subprocess.Popen | None = None
        self.info: StackInfo | None = None
        self.http = urllib3.PoolManager(maxsize=16, timeout=urllib3.Timeout(30))
        self._stack_out: IO[bytes] | None = None
        self._api: ApiClient | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> SystemRun:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> StackInfo:
        self.redis.start()
        self.postgres = OwnPostgres(self.workdir / "postgres", self.run_id)
        self.postgres.start()
        stack_dir = self.workdir / "stack"
        stack_dir.mkdir(parents=True, exist_ok=True)
        schema = "offload_system"
        self._stack_out = open(self.workdir / "stack.out", "ab")  # noqa: SIM115 - closed in close()
        self.stack_proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "offload_local", "--port", "0"),
                *("--workdir", str(stack_dir), "--schema", schema),
                *("--queue-prefix", "{offload-system}"),
                *("--redis-url", self.redis.url, "--database-url", self.postgres.url),
                *("--password", "Aa1!system-" + self.run_id),
                *self.config.cli_args(),
            ],
            cwd=REPO_ROOT,
            env=marked_env(self.run_id, {"PYTHONPATH": str(REPO_ROOT)}),
            stdout=self._stack_out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + STACK_START_TIMEOUT_S
        out = self.workdir / "stack.out"
        while "Ctrl-C stops everything" not in out.read_text(errors="replace"):
            if self.stack_proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the stack did not start:\n{out.read_text()[-3000:]}")
            time.sleep(0.2)
        self.info = StackInfo(**json.loads((stack_dir / "stack.json").read_text()))
        self.wait_workers(self.config.workers)
        return self.info

    def close(self) -> list[str]:
        """Stops the stack (SIGTERM: workers drain), then the servers; SIGKILLs whatever is left
        of this run. Returns the processes that had to be killed that way."""
        forced: list[str] = []
        if self.stack_proc is not None and self.stack_proc.poll() is None:
            self.stack_proc.send_signal(signal.SIGTERM)
            try:
                self.stack_proc.wait(self.config.grace_s + 60)
            except subprocess.TimeoutExpired:
                forced.append(f"{self.stack_proc.pid} python -m offload_local (did not stop)")
        self.redis.stop()
        if self.postgres is not None:
            self.postgres.remove()
        forced += sweep(self.run_id)  # whatever is left, however deep in the stack's tree
        if self.stack_proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.stack_proc.wait(5)
        self.http.clear()
        if self._stack_out is not None:
            self._stack_out.close()
        return forced

    # --- the stack's processes ------------------------------------------------------------------

    @property
    def stack_pid(self) -> int:
        assert self.stack_proc is not None
        return self.stack_proc.pid

    def workers(self) -> list[psutil.Process]:
        """The live worker processes (``python -m fargate_worker``), oldest first."""
        found = []
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.stack_pid).children():
                with contextlib.suppress(psutil.Error):
                    if "fargate_worker" in child.cmdline() and alive(child):
                        found.append(child)
        return sorted(found, key=lambda p: p.create_time())

    def wait_workers(self, count: int, timeout_s: float = 60.0) -> list[psutil.Process]:
        """Until ``count`` workers run and each has started its sandbox children."""

        def ready() -> list[psutil.Process] | None:
            workers = self.workers()
            if len(workers) < count:
                return None
            for worker in workers:
                with contextlib.suppress(psutil.Error):
                    if len(worker.children(recursive=True)) < 2:  # fork server + a child
                        return None
            return workers

        return wait_until(ready, timeout_s, f"{count} workers running")

    def kill_worker(self, worker: psutil.Process, signum: int = signal.SIGKILL) -> Killed:
        """Signals one worker; returns it with its descendants as they were (to check that none
        outlives it)."""
        try:
            descendants = worker.children(recursive=True)
        except psutil.Error:
            descendants = []
        worker.send_signal(signum)
        return Killed(worker, descendants, time.monotonic())

    def worker_exits(self) -> dict[int, str]:
        """Pid -> how each replaced worker ended ("exit code 0", "SIGKILL"), from the stack's
        log (the stack is the workers' parent: only it sees their exit status)."""
        log = self.workdir / "stack" / "stack.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return {int(pid): how for pid, how in _WORKER_EXIT.findall(text)}

    # --- clients --------------------------------------------------------------------------------

    @property
    def api(self) -> ApiClient:
        if self._api is None:
            assert self.info is not None
            self._api = ApiClient(self.info, pool=self.http)
        return self._api

    @property
    def settings(self) -> Settings:
        """Settings of a producer on this stack's queue and schema (test processors)."""
        assert self.info is not None
        return replace(
            self.config.settings,
            redis_url=self.info.redis_url,
            database_url=self.info.database_url,
            database_schema=self.info.schema,
            queue_prefix=self.info.queue_prefix,
            upload_bucket=self.info.bucket,
            default_backoff_ms=int(self.config.env.get("OFFLOAD_BACKOFF_MS", "2000")),
        )

    @contextlib.contextmanager
    def db(self) -> Iterator[psycopg.Connection]:
        assert self.info is not None
        with psycopg.connect(
            self.info.database_url,
            autocommit=True,
            row_factory=dict_row,
            options=schema_options(self.info.schema),
            connect_timeout=5,
        ) as conn:
            yield conn

    def sql(self, statement: str, params: Any = None) -> list[dict[str, Any]]:
        with self.db() as conn:
            return conn.execute(statement, params).fetchall()

    def upload(self, data: bytes, filename: str, content_type: str = "text/csv") -> str:
        """One upload as a browser makes it: ``POST /uploads``, then the presigned POST to S3
        (the moto server). Returns the upload id."""
        return self.timed_upload(data, filename, content_type)[0]

    def timed_upload(
        self, data: bytes, filename: str, content_type: str = "text/csv"
    ) -> tuple[str, float]:
        """``upload``, and the wall-clock time at which the presigned POST was sent: the S3
        event comes after it, whereas a time taken once the POST returned can come after the
        job is active (a driver thread that waited for the GIL)."""
        created = self.api.call(
            "POST",
            "/uploads",
            {"filename": filename, "size": len(data), "contentType": content_type},
        )
        if created.status != 201:
            raise RuntimeError(f"POST /uploads answered {created.status}: {created.body}")
        sent_at = time.time()
        presigned_post(created.body["post"], filename, data, content_type, pool=self.http)
        return created.body["id"], sent_at

    def add_jobs(self, refs: list[tuple[str, JobRef]]) -> list[str]:
        """Jobs added straight to the queue, as ``Producer`` adds every job (status row first)."""

        async def add() -> list[str]:
            async with producer(self.settings) as made:
                return [await made.enqueue(name, ref) for name, ref in refs]

        return run_async(add())


@dataclass
class Killed:
    worker: psutil.Process
    descendants: list[psutil.Process]
    at: float  # time.monotonic()

    def survivors(self) -> list[psutil.Process]:
        return [p for p in [self.worker, *self.descendants] if alive(p)]


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)
