"""Producing jobs: the one way anything (enqueue Lambda, reconciler, retry route, demo, tests)
adds a job.

Every producer goes through :class:`Producer`, so every job gets the deterministic id, the
default attempts/backoff/retention, a ``queued`` status row, and the queue its step runs from
(the main queue, or the step's own queue when it has limits: ``offload.step_limits``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import redis.asyncio
from bullmq import Queue
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from offload.jobs import JobRef, job_id
from offload.priorities import upload_priority
from offload.redis_conn import settings_connection_options
from offload.settings import Settings
from offload.step_limits import queue_for

# The status store (psycopg, ~100-150 ms to import) is loaded with the first Producer, which
# needs a pool and so PostgreSQL anyway: a process that only reads the queue (the queue
# metrics Lambda) does not pay for psycopg.
if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from offload.db.uploads import Upload

# Producers answer requests (API Gateway gives up after 29 s, an SQS batch has its budget):
# with bullmq's own client a refused connection is retried 20 times with backoff up to 20 s,
# minutes before the caller hears of it. Fail within seconds instead; the caller retries.
PRODUCER_SOCKET_TIMEOUT_S = 5.0
PRODUCER_RETRIES = 2


def producer_connection(settings: Settings) -> redis.asyncio.Redis:
    options = settings_connection_options(settings, socket_connect_timeout=3.0)
    options["socket_timeout"] = PRODUCER_SOCKET_TIMEOUT_S  # producers never block on Redis
    return redis.asyncio.Redis(
        decode_responses=True,  # what bullmq's scripts expect
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), PRODUCER_RETRIES),
        **options,
    )


def queue_options(settings: Settings) -> dict[str, Any]:
    return {
        "connection": producer_connection(settings),
        "prefix": settings.queue_prefix,
        "defaultJobOptions": settings.default_job_options(),
    }


def open_queue(settings: Settings, name: str | None = None) -> Queue:
    """One Queue (one Redis connection) per queue and process; reuse it across invocations.
    ``name``: a step queue (``offload.step_limits``); the main queue by default."""
    return Queue(name or settings.queue_name, queue_options(settings))


class Producer:
    def __init__(self, settings: Settings, pool: AsyncConnectionPool):
        from offload.db.status import StatusStore

        self.settings = settings
        self.queue = open_queue(settings)  # the main queue
        self._queues: dict[str, Queue] = {settings.queue_name: self.queue}
        self.store = StatusStore(pool)

    def queue_named(self, name: str) -> Queue:
        """The main queue or a step queue, opened (a connection of its own) at first use: a
        process whose jobs never reach a limited step never connects for it."""
        if name not in self._queues:
            self._queues[name] = open_queue(self.settings, name)
        return self._queues[name]

    async def enqueue(
        self,
        name: str,
        ref: JobRef,
        extra_opts: dict[str, Any] | None = None,
        *,
        queue: str | None = None,
    ) -> str:
        """Record the job as queued (PostgreSQL first: it is the source of truth the reconciler
        replays from), then add it to Redis under its deterministic id. Adding the same object
        version twice is a no-op in both places. Returns the job id.

        The job goes to its step's queue (``offload.step_limits.queue_for``); ``queue`` names
        another one (the reconciler re-adds a lost job where its row says it was)."""
        from offload.db.status import JobIdentity  # loaded with the store (__init__)

        queue_name = queue or queue_for(self.settings, name)
        identity = JobIdentity(job_id(name, ref), name, queue_name, ref)
        opts = {
            **self.settings.default_job_options(),
            **(extra_opts or {}),
            "jobId": identity.job_id,
        }
        await self.store.mark_queued(identity, int(opts["attempts"]))
        await self.queue_named(queue_name).add(name, ref.to_data(), opts)
        return identity.job_id

    async def enqueue_upload_job(self, name: str, ref: JobRef, upload: Upload) -> str:
        """A job of an upload, with the priority its size and its creator's tier give
        (``offload.priorities``)."""
        size = upload.size_actual if upload.size_actual is not None else upload.size_announced
        priority = upload_priority(self.settings, size, upload.tier)
        return await self.enqueue(name, ref, {"priority": priority})

    async def close(self) -> None:
        for queue in self._queues.values():
            await queue.close()


@asynccontextmanager
async def producer(settings: Settings) -> AsyncIterator[Producer]:
    """A producer with a pool of its own, for scripts and tests (long-lived processes share
    their pool instead)."""
    from offload.db.credentials import database_url_source
    from offload.db.pool import create_pool

    pool = create_pool(
        database_url_source(settings),
        settings.database_schema,
        max_size=2,
        schema_from_role=settings.database_schema_from_role,
    )
    await pool.open(wait=False)
    made = Producer(settings, pool)
    try:
        yield made
    finally:
        await made.close()
        await pool.close()
