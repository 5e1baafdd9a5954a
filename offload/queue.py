"""Producing jobs: the one way anything (enqueue Lambda, reconciler, retry route, demo, tests)
adds a job.

Every producer goes through :class:`Producer`, so every job gets the deterministic id, the
default attempts/backoff/retention, a ``queued`` status row, and the queue its step runs from
(the main queue, or the step's own queue when it has limits: ``offload.step_limits``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import redis.asyncio
from bullmq import FlowProducer, Queue
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from offload.flows import flow_tree, nodes_to_add, plan_flow
from offload.jobs import JobRef, job_id
from offload.pipelines import Pipeline
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
        self._flows: FlowProducer | None = None

    @property
    def flows(self) -> FlowProducer:
        """The flow producer, on the queue's own Redis client (no second connection): made at
        the first flow, so a producer that only adds single jobs never builds it."""
        if self._flows is None:
            self._flows = FlowProducer(
                {"connection": self.queue.client, "prefix": self.settings.queue_prefix}
            )
        return self._flows

    async def start_flow(
        self,
        pipeline: Pipeline,
        ref: JobRef,
        states: Mapping[str, str],
        upload: Upload | None = None,
        *,
        priority: int | None = None,
    ) -> tuple[str, ...]:
        """Start (or repair) the flow of ``ref``'s object under ``pipeline``
        (``offload.flows.plan_flow``, in this producer's queue): the nodes that
        ``offload.flows.nodes_to_add`` picks from the flow's status rows (``states``: job id
        -> row state, every row the caller knows of; empty for a new upload). Their rows
        first (one statement; children carry the parent's id), then the tree in Redis in one
        MULTI/EXEC (``FlowProducer.add``). Idempotent: bullmq's addJob/addParentJob answer an
        existing id with that id and leave the job as it is; a child bullmq still has stays
        linked to the same parent. Returns the ids of the nodes added (none when the flow is
        over).

        Every job of the flow gets ``priority``, else that of ``upload`` (its size and its
        creator's tier, ``offload.priorities``); without either, that of an upload of unknown
        size from the standard tier: a job without a priority would go ahead of every
        prioritised one."""
        from offload.db.status import JobIdentity  # loaded with the store (__init__)

        settings = self.settings
        plan = plan_flow(pipeline, ref, settings.queue_name, lambda name: queue_for(settings, name))
        nodes = nodes_to_add(plan, states)
        if not nodes:
            return ()
        if priority is None:
            priority = self.priority_of(upload)
        options = settings.default_job_options() | {"priority": priority}
        attempts = int(options["attempts"])
        parent_id = plan.parent.job_id
        await self.store.mark_queued_many(
            [
                (
                    JobIdentity(
                        node.job_id,
                        node.name,
                        node.queue,
                        node.ref,
                        None if node == plan.parent else parent_id,
                    ),
                    attempts,
                )
                for node in nodes
            ]
        )
        await self.flows.add(flow_tree(plan, nodes, options))
        return tuple(node.job_id for node in nodes)

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

    def priority_of(self, upload: Upload | None) -> int:
        """The priority of an upload's jobs: from its size and its creator's tier
        (``offload.priorities``); an unknown upload counts as the largest size, standard tier."""
        if upload is None:
            return upload_priority(self.settings, None, None)
        size = upload.size_actual if upload.size_actual is not None else upload.size_announced
        return upload_priority(self.settings, size, upload.tier)

    async def enqueue_upload_job(self, name: str, ref: JobRef, upload: Upload) -> str:
        """A job of an upload, with the priority of its upload (:meth:`priority_of`)."""
        return await self.enqueue(name, ref, {"priority": self.priority_of(upload)})

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
