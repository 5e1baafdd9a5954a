"""Producing jobs: the one way anything (enqueue Lambda, reconciler, demo, tests) adds a job.

Every producer goes through :func:`enqueue`, so every job gets the deterministic id, the
default attempts/backoff/retention, and a ``queued`` status row.
"""

from __future__ import annotations

from typing import Any

from bullmq import Queue

from offload.db.status import JobIdentity, StatusStore
from offload.jobs import JobRef, job_id
from offload.redis_conn import connection_options
from offload.settings import Settings


def queue_options(settings: Settings) -> dict[str, Any]:
    return {
        "connection": connection_options(settings.redis_url, settings.redis_auth_token),
        "prefix": settings.queue_prefix,
        "defaultJobOptions": settings.default_job_options(),
    }


def open_queue(settings: Settings) -> Queue:
    """One Queue (one Redis connection) per process; reuse it across invocations."""
    return Queue(settings.queue_name, queue_options(settings))


async def enqueue(
    queue: Queue,
    store: StatusStore | None,
    settings: Settings,
    name: str,
    ref: JobRef,
    extra_opts: dict[str, Any] | None = None,
) -> str:
    """Record the job as queued (PostgreSQL first: it is the source of truth the reconciler
    replays from), then add it to Redis under its deterministic id. Adding the same object
    version twice is a no-op in both places. Returns the job id."""
    identity = JobIdentity(job_id(name, ref), name, settings.queue_name, ref)
    opts = {**settings.default_job_options(), **(extra_opts or {}), "jobId": identity.job_id}
    if store is not None:
        await store.mark_queued(identity, int(opts["attempts"]))
    await queue.add(name, ref.to_data(), opts)
    return identity.job_id
