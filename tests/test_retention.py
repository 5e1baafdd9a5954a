"""The retention system job (offload.db.retention, fargate_worker.system_jobs): old final uploads
go with their job rows, events and queue entries, in batches, as the maintenance database role;
nothing of a live upload ever goes. Real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any

import psycopg
import redis
from bullmq import Worker

from fargate_worker.system_jobs import SYSTEM_JOBS, SystemContext
from offload.jobs import JobRef
from offload.queue import producer
from offload.redis_conn import settings_connection_options
from offload.settings import Settings
from tests.support.redis_acl import as_environment, as_user
from tests.support.servers import role_url

OLD = "now() - interval '31 days'"
YOUNG = "now() - interval '29 days'"


def _sql(settings: Settings, statement: str, params: Any = ()) -> list[tuple]:
    with psycopg.connect(
        settings.database_url, options=f"-c search_path={settings.database_schema}"
    ) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def _upload(settings: Settings, state: str, *, finished: str | None, updated: str = OLD) -> str:
    upload_id = uuid.uuid4().hex
    _sql(
        settings,
        "INSERT INTO uploads (id, owner, bucket, key, filename, state, finished_at, updated_at)"
        f" VALUES (%s, 'owner', 'b', %s, 'f', %s, {finished or 'NULL'}, {updated})",
        (upload_id, f"uploads/owner/{upload_id}/f", state),
    )
    return upload_id


async def _jobs(settings: Settings, upload_id: str | None, states: tuple[str, ...]) -> list[str]:
    """Jobs queued as the producers do (row + bullmq job), then moved to ``states``."""
    ids = []
    async with producer(settings) as made:
        for n, state in enumerate(states):
            key = f"uploads/owner/{upload_id or uuid.uuid4().hex}/f"
            ref = JobRef(bucket="b", key=key, etag=str(n), owner="owner", upload_id=upload_id)
            job_id = await made.enqueue("inspect", ref)
            _sql(settings, "UPDATE jobs SET state = %s WHERE id = %s", (state, job_id))
            _sql(
                settings,
                "INSERT INTO job_events (job_id, attempt, state) VALUES (%s, 1, %s)",
                (job_id, state),
            )
            ids.append(job_id)
    return ids


def _exists(settings: Settings, table: str, column: str, value: str) -> bool:
    return bool(_sql(settings, f"SELECT 1 FROM {table} WHERE {column} = %s", (value,)))


def _in_redis(settings: Settings, job_id: str) -> bool:
    client = redis.Redis.from_url(as_environment(settings).redis_url)
    try:
        return bool(client.exists(f"{settings.queue_prefix}:{settings.queue_name}:{job_id}"))
    finally:
        client.close()


def _maintenance(settings: Settings, **overrides: Any) -> Settings:
    return replace(
        settings,
        retention_days=30,
        maintenance_database_url=role_url(
            settings.database_url, settings.database_schema, "maintenance"
        ),
        **overrides,
    )


async def _retention(settings: Settings) -> dict[str, Any]:
    async with SystemContext(as_user(settings, "worker")) as context:  # the worker's Redis user
        return await SYSTEM_JOBS["retention"].run(context)


def test_old_final_uploads_go_with_their_jobs_events_and_queue_entries_in_batches(settings):
    asyncio.run(_deletes_in_batches(_maintenance(settings, retention_batch=2)))


async def _deletes_in_batches(settings: Settings) -> None:
    processed = _upload(settings, "processed", finished=OLD)
    failed = _upload(settings, "failed", finished=OLD)
    # Rejected and aborted uploads never got a finished_at: their updated_at counts.
    aborted = _upload(settings, "aborted", finished=None, updated=OLD)
    rejected = _upload(settings, "rejected", finished=None, updated=OLD)
    young = _upload(settings, "processed", finished=YOUNG)
    gone_jobs = [
        *await _jobs(settings, processed, ("completed", "completed")),
        *await _jobs(settings, failed, ("completed", "failed")),
    ]
    young_jobs = await _jobs(settings, young, ("completed",))
    assert all(_in_redis(settings, job) for job in gone_jobs)

    result = await _retention(settings)

    assert result == {
        "uploadsDeleted": 4,
        "jobsDeleted": 4,
        "batches": 2,
        "uploadsKept": 0,
        "olderThanDays": 30,
    }
    for upload in (processed, failed, aborted, rejected):
        assert not _exists(settings, "uploads", "id", upload)
    for job in gone_jobs:
        assert not _exists(settings, "jobs", "id", job)
        assert not _exists(settings, "job_events", "job_id", job)  # ON DELETE CASCADE
        assert not _in_redis(settings, job)
    assert _exists(settings, "uploads", "id", young)
    assert _exists(settings, "jobs", "id", young_jobs[0]) and _in_redis(settings, young_jobs[0])
    # A second run finds nothing more.
    again = await _retention(settings)
    assert (again["uploadsDeleted"], again["jobsDeleted"]) == (0, 0)


def test_nothing_of_a_live_upload_or_of_a_job_without_upload_is_ever_deleted(settings):
    asyncio.run(_keeps_live(_maintenance(settings)))


async def _keeps_live(settings: Settings) -> None:
    # Final in PostgreSQL, but bullmq holds a lock on its job: running right now. (First in
    # the queue, so that the worker below takes it.)
    locked = _upload(settings, "processed", finished=OLD)
    (locked_job,) = await _jobs(settings, locked, ("completed",))
    # Live: still queued (its steps done, its final state not written yet) however old.
    queued = _upload(settings, "queued", finished=None, updated=OLD)
    queued_jobs = await _jobs(settings, queued, ("completed", "completed"))
    # Failed, but one of its steps still runs (a sibling of the step that failed).
    failed = _upload(settings, "failed", finished=OLD)
    failed_jobs = await _jobs(settings, failed, ("failed", "active"))
    # No upload behind it: nothing says whether it is live.
    (orphan_job,) = await _jobs(settings, None, ("completed",))
    _sql(settings, f"UPDATE jobs SET updated_at = {OLD}, finished_at = {OLD}")
    deletable = _upload(settings, "processed", finished=OLD)
    (deletable_job,) = await _jobs(settings, deletable, ("completed",))

    taker = Worker(
        settings.queue_name,
        _never_called,
        {
            "connection": settings_connection_options(as_user(settings, "worker")),
            "prefix": settings.queue_prefix,
            "autorun": False,
            "lockDuration": 60_000,
        },
    )
    try:
        taken = await taker.getNextJob("token")  # moved to active, locked: as a worker does
        assert taken is not None and taken.id == locked_job
        result = await _retention(settings)
    finally:
        await taker.close(force=True)

    assert (result["uploadsDeleted"], result["jobsDeleted"], result["uploadsKept"]) == (1, 1, 1)
    assert not _exists(settings, "uploads", "id", deletable)
    assert not _exists(settings, "jobs", "id", deletable_job)
    for upload in (queued, failed, locked):
        assert _exists(settings, "uploads", "id", upload)
    for job in (*queued_jobs, *failed_jobs, locked_job, orphan_job):
        assert _exists(settings, "jobs", "id", job)
        assert _in_redis(settings, job)


async def _never_called(job: Any, token: str) -> None:
    raise AssertionError("the test takes its job by hand")
