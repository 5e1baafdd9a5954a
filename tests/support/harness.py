"""Running the worker in tests: in-process (asyncio) or as a real `python -m fargate_worker`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
from bullmq import Queue
from psycopg.rows import dict_row

from fargate_worker.worker import OffloadWorker
from offload.db.pool import create_pool
from offload.db.status import StatusStore
from offload.jobs import JobRef
from offload.queue import Producer
from offload.queue import producer as producer
from offload.settings import Settings
from offload.step_limits import format_step_limits
from tests.support.redis_acl import as_user
from tests.support.servers import role_url

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_PROCESSORS = "tests.support.processors"


def test_settings(
    redis_url: str, database_url: str, schema: str, prefix: str, **overrides: Any
) -> Settings:
    base = Settings(
        redis_url=redis_url,
        database_url=database_url,
        database_schema=schema,
        queue_prefix=prefix,
        processor_modules=(TEST_PROCESSORS, "fargate_worker.processors.builtin"),
        health_file=f"/tmp/offload-test-{os.getpid()}-{prefix.strip('{}')}.health",
        health_interval_s=1,
        drain_delay_s=1,
        default_backoff_ms=200,
        default_attempts=3,
    )
    return replace(base, **overrides)


def env_for(settings: Settings, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment that makes `Settings.from_env()` equal ``settings`` (for subprocesses)."""
    env = dict(os.environ)
    env.update(
        {
            "REDIS_URL": settings.redis_url,
            "DATABASE_URL": settings.database_url,
            "OFFLOAD_DB_SCHEMA": settings.database_schema,
            "OFFLOAD_QUEUE_NAME": settings.queue_name,
            "OFFLOAD_QUEUE_PREFIX": settings.queue_prefix,
            "OFFLOAD_CONCURRENCY": str(settings.concurrency),
            "OFFLOAD_LOCK_DURATION_MS": str(settings.lock_duration_ms),
            "OFFLOAD_STALLED_INTERVAL_MS": str(settings.stalled_interval_ms),
            "OFFLOAD_MAX_STALLED_COUNT": str(settings.max_stalled_count),
            "OFFLOAD_DRAIN_DELAY_S": str(settings.drain_delay_s),
            "OFFLOAD_ATTEMPTS": str(settings.default_attempts),
            "OFFLOAD_BACKOFF_MS": str(settings.default_backoff_ms),
            "OFFLOAD_SHUTDOWN_GRACE_S": str(settings.shutdown_grace_s),
            "OFFLOAD_PROCESSOR_MODULES": ",".join(settings.processor_modules),
            "OFFLOAD_HEALTH_FILE": settings.health_file,
            "OFFLOAD_HEALTH_INTERVAL_S": str(settings.health_interval_s),
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    if settings.s3_endpoint_url:
        env["S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    if settings.step_limits:
        env["OFFLOAD_STEP_LIMITS"] = format_step_limits(settings.step_limits)
    env["OFFLOAD_PRIORITY_SIZE_BANDS"] = ",".join(map(str, settings.priority_size_bands)) or "none"
    env.update(extra or {})
    return env


# The worker as its container runs it (fargate_worker/Dockerfile: a non-root uid, no
# capabilities). Tests run as root here, and root reads every process's /proc files whatever
# the process does (CAP_SYS_PTRACE): a child run as root would prove nothing about what a
# child can read. So: uid and gid ``nobody``, every capability dropped for good (bounding set)
# except CAP_DAC_READ_SEARCH, which only lets it reach the interpreter and the repository
# (under root's home on the test machines) and grants nothing over other processes.
UNPRIVILEGED = (
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all,+dac_read_search",
    "--ambient-caps=+dac_read_search",
    "--bounding-set=-all,+dac_read_search",
)


def spawn_worker(
    settings: Settings, log_path: Path, *, unprivileged: bool = False, **extra_env: str
) -> subprocess.Popen:
    """`python -m fargate_worker`; ``unprivileged``: as ``UNPRIVILEGED`` (when the tests run as
    root; otherwise they already are an unprivileged uid)."""
    prefix = UNPRIVILEGED if unprivileged and os.geteuid() == 0 else ()
    settings = as_user(settings, "worker")  # under the ACL (tests/support/redis_acl.py)
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "fargate_worker"],
        cwd=REPO_ROOT,
        env=env_for(settings, extra_env),
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
    )


@asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[OffloadWorker]:
    """The worker, logged in as the worker's database role when the test schema has one,
    and as the Redis worker user under the ACL (tests/support/redis_acl.py)."""
    worker = OffloadWorker(as_user(as_component(settings, "worker"), "worker"))
    await worker.start()
    try:
        yield worker
    finally:
        await worker.shutdown(grace_s=5)


def as_component(settings: Settings, component: str) -> Settings:
    """``settings`` logging in as ``component``'s own database role (``offload.db.roles``),
    as deployed, when the schema has that role (every ``pg_schema`` fixture's schema does);
    unchanged otherwise (a schema made without roles: the local stack, benchmarks)."""
    from offload.db.roles import role_name

    try:
        name = role_name(settings.database_schema, component)
    except ValueError:  # a schema name too long to prefix a role: made without roles
        return settings
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
            return settings
    return replace(
        settings, database_url=role_url(settings.database_url, settings.database_schema, component)
    )


@asynccontextmanager
async def status_store(settings: Settings) -> AsyncIterator[StatusStore]:
    """The worker's status store on a pool of its own: writes exactly as a worker makes them."""
    pool = create_pool(settings.database_url, settings.database_schema, max_size=2)
    await pool.open(wait=True, timeout=10)
    try:
        yield StatusStore(pool)
    finally:
        await pool.close()


async def add(
    producer: Producer, name: str, key: str, bucket: str = "test-bucket", **opts: Any
) -> str:
    return await producer.enqueue(name, JobRef(bucket=bucket, key=key), opts)


def job_row(settings: Settings, job_id: str) -> dict[str, Any] | None:
    with psycopg.connect(
        settings.database_url, options=f"-c search_path={settings.database_schema}"
    ) as conn:
        conn.row_factory = dict_row
        return conn.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()


def job_events(settings: Settings, job_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(
        settings.database_url, options=f"-c search_path={settings.database_schema}"
    ) as conn:
        conn.row_factory = dict_row
        return conn.execute(
            "SELECT * FROM job_events WHERE job_id = %s ORDER BY id", (job_id,)
        ).fetchall()


async def wait_for(
    predicate: Callable[[], Any], timeout_s: float = 20.0, interval_s: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(interval_s)


async def wait_for_state(
    settings: Settings, job_id: str, state: str, timeout_s: float = 20.0
) -> dict[str, Any]:
    return await wait_for(
        lambda: (row := job_row(settings, job_id)) and row["state"] == state and row,
        timeout_s,
    )


async def queue_job_in_state(queue: Queue, job_id: str, state: str) -> Any:
    """The queue's job once it is in ``state`` (it moves just after its status is stored).
    The state is read first: a job read before its move would carry the previous attempt's
    fields (attemptsMade, failedReason) even though it is in ``state`` by the time it is
    checked."""
    if await queue.getJobState(job_id) != state:
        return None
    return await queue.getJob(job_id)
