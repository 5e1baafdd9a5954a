"""System jobs: work the system schedules for itself (``OFFLOAD_SCHEDULES``), with no upload
behind it. Today one: ``retention``.

A queue job is either an upload step or a system job, by its name
(``OffloadWorker._process``):

* an **upload step** carries a ``JobRef`` (bucket, key, version...), has a status row in
  PostgreSQL that its user follows, and runs a processor in a sandbox child, because it reads
  hostile input;
* a **system job** carries no data (its parameters are settings: whoever can add a job to the
  queue can at most make it run once more, never change what it does), has no status row
  (``jobs`` rows are the users' view of their uploads' work, and ``bucket``/``key`` are NOT
  NULL), and runs here, in the worker's own process, as a coroutine on its event loop. It
  reads no user bytes, and it needs what the sandbox is built to keep from a child: the
  ``maintenance`` database login (``offload.db.roles``) and the queue itself. It is I/O only
  (SQL and Redis round trips in bounded batches), so the event loop, and with it the locks of
  the jobs running beside it, are never blocked for long. Its outcome is in the logs (one
  line per job, with its counts), in the worker's EMF metrics (``JobsCompleted`` /
  ``JobsFailed`` by ``JobName``) and in bullmq (the job's return value or failed reason).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from bullmq import Queue, UnrecoverableError
from psycopg_pool import AsyncConnectionPool

from offload.db.credentials import database_url_source
from offload.db.pool import create_pool
from offload.db.retention import delete_expired
from offload.queue import open_queue
from offload.settings import Settings

log = logging.getLogger(__name__)


class SystemContext:
    """What one run of a system job may use: the settings, the maintenance database login
    and the queues by name (opened on first use). Made for each run and closed after it: a
    system job runs rarely (retention: daily), and a worker task should not hold a
    maintenance connection the rest of the time (with many tasks, that is many idle
    connections, each a login that could delete)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.pool: AsyncConnectionPool = create_pool(
            database_url_source(maintenance_settings(settings)),
            settings.database_schema,
            max_size=1,
            schema_from_role=settings.database_schema_from_role,
        )
        self._queues: dict[str, Queue] = {}

    def queue(self, name: str) -> Queue:
        if name not in self._queues:
            self._queues[name] = open_queue(replace(self.settings, queue_name=name))
        return self._queues[name]

    async def __aenter__(self) -> SystemContext:
        await self.pool.open(wait=False)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        for queue in self._queues.values():
            await queue.close()
        await self.pool.close()


@dataclass(frozen=True)
class SystemJob:
    name: str
    run: Callable[[SystemContext], Awaitable[dict[str, Any]]]
    timeout_s: int


async def _retention(ctx: SystemContext) -> dict[str, Any]:
    async def remove(queue_name: str, job_id: str) -> bool:
        # bullmq's removeJob: 1 removed (or absent), 0 locked by a worker.
        return bool(await ctx.queue(queue_name).remove(job_id))

    report = await delete_expired(
        ctx.pool,
        remove,
        days=ctx.settings.retention_days,
        batch=ctx.settings.retention_batch,
    )
    return report.as_result() | {"olderThanDays": ctx.settings.retention_days}


SYSTEM_JOBS: dict[str, SystemJob] = {
    job.name: job for job in (SystemJob("retention", _retention, timeout_s=3_600),)
}


def maintenance_settings(settings: Settings) -> Settings:
    """The worker's settings logging in as the maintenance role: its IAM user (AWS) or its URL
    (local stack, tests); the worker's own login when neither is set (a schema owner's login,
    as in the local stack)."""
    if settings.maintenance_database_iam_user:
        return replace(settings, database_iam_user=settings.maintenance_database_iam_user)
    if settings.maintenance_database_url:
        return replace(
            settings,
            database_url=settings.maintenance_database_url,
            database_iam_user=None,
            database_secret_arn=None,
        )
    return settings


class SystemJobRunner:
    """Runs system jobs in the worker process (see the module's docstring for why)."""

    def __init__(self, settings: Settings, jobs: dict[str, SystemJob] | None = None):
        self.jobs = SYSTEM_JOBS if jobs is None else jobs
        self.settings = settings

    def __contains__(self, name: object) -> bool:
        return name in self.jobs

    async def run(self, job: Any) -> dict[str, Any]:
        system = self.jobs[job.name]
        if job.data not in (None, {}):
            # Parameters come from settings, never from the queue (docstring).
            raise UnrecoverableError(f"system job {job.name!r} takes no data")
        async with SystemContext(self.settings) as context:
            return await asyncio.wait_for(system.run(context), system.timeout_s)
