"""Recurring jobs (offload.schedules, fargate_worker.schedules): declared in settings, registered
idempotently by any number of workers, re-registered when Redis loses them, run by the worker
again and again. Real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import replace

import psycopg
import pytest
import redis
from bullmq import Queue

from fargate_worker.schedules import ScheduleKeeper
from fargate_worker.worker import OffloadWorker
from offload.queue import open_queue
from offload.schedules import Schedule
from offload.settings import Settings, SettingsError
from offload_local.stack import delete_keys
from tests.support.harness import running_worker, wait_for
from tests.support.redis_acl import as_environment, as_user
from tests.support.servers import role_url

YEARLY = Schedule("yearly", "retention", cron="0 0 1 1 *", tz="Europe/Paris")
HOURLY = Schedule("hourly", "retention", every_ms=3_600_000)
PENDING = ("delayed", "waiting", "prioritized")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not json", "must be a JSON object"),
        ("[]", "JSON object of schedules"),
        ('{"a:b": {"job": "retention", "every_ms": 1000}}', "schedule id 'a:b'"),
        ('{"a": "retention"}', "schedule 'a' must be an object"),
        ('{"a": {"job": "retention"}}', "exactly one of cron and every_ms"),
        ('{"a": {"job": "retention", "cron": "* * * * *", "every_ms": 1000}}', "exactly one"),
        ('{"a": {"job": "Retention!", "every_ms": 1000}}', "needs a job name"),
        ('{"a": {"job": "retention", "every_ms": 10}}', "every_ms must be an integer"),
        ('{"a": {"job": "retention", "every_ms": "1000"}}', "every_ms must be an integer"),
        ('{"a": {"job": "retention", "every_ms": 1000, "tz": "UTC"}}', "tz applies to cron"),
        ('{"a": {"job": "retention", "cron": "* * * * *", "tz": "Mars/Olympus"}}', "time zone"),
        ('{"a": {"job": "retention", "cron": "* * * * *", "when": 1}}', "unknown fields"),
    ],
)
def test_a_bad_schedule_setting_fails_at_start_naming_the_variable(raw, message):
    with pytest.raises(SettingsError, match="OFFLOAD_SCHEDULES") as caught:
        Settings.from_env({"OFFLOAD_SCHEDULES": raw})
    assert message in str(caught.value)


@pytest.mark.unit
def test_schedules_default_to_a_daily_retention_and_can_be_turned_off():
    (default,) = Settings.from_env({}).schedules
    assert (default.id, default.job, default.cron) == ("retention", "retention", "17 3 * * *")
    assert Settings.from_env({"OFFLOAD_SCHEDULES": "{}"}).schedules == ()
    parsed = Settings.from_env(
        {
            "OFFLOAD_SCHEDULES": '{"b": {"job": "retention", "every_ms": 60000},'
            ' "a": {"job": "retention", "cron": "0 4 * * *", "tz": "Europe/Paris"}}'
        }
    ).schedules
    assert parsed == (
        Schedule("a", "retention", cron="0 4 * * *", tz="Europe/Paris"),
        Schedule("b", "retention", every_ms=60_000),
    )


def test_a_schedule_the_worker_cannot_run_fails_its_start(settings):
    asyncio.run(_start_fails(settings))


async def _start_fails(settings: Settings) -> None:
    for schedules, message in (
        ((Schedule("s", "no-such-job", every_ms=1000),), "not a system job"),
        ((Schedule("s", "retention", cron="61 * * * *"),), "cron pattern '61 * * * *'"),
    ):
        worker = OffloadWorker(replace(settings, schedules=schedules))
        with pytest.raises(SettingsError, match=re.escape(message)):
            await worker.start()
        await worker.pool.close()


async def _pending_jobs(queue: Queue, schedule_id: str) -> list[str]:
    jobs = await queue.getJobs(list(PENDING))
    return [job.id for job in jobs if job.id.startswith(f"repeat:{schedule_id}:")]


def test_twenty_concurrent_registrations_give_one_schedule_and_one_next_job(settings):
    """As twenty workers starting at once: each with its own connection, all at the same time;
    then a stuck scheduler (its next job lost) and an undeclared one are repaired."""
    asyncio.run(_twenty_registrations(settings))


async def _twenty_registrations(settings: Settings) -> None:
    schedules = (YEARLY, HOURLY)
    options = settings.default_job_options()
    as_worker = as_user(settings, "worker")  # who registers schedules (under the ACL)
    keepers = [ScheduleKeeper(open_queue(as_worker), schedules, options, 60) for _ in range(20)]
    queue = open_queue(settings)
    try:
        await asyncio.gather(*(keeper.ensure() for keeper in keepers))
        assert await queue.getJobSchedulersCount() == 2
        for schedule in schedules:
            assert len(await _pending_jobs(queue, schedule.id)) == 1, schedule.id
        yearly = await queue.getJobScheduler(YEARLY.id)
        assert (yearly["name"], yearly["pattern"], yearly["tz"]) == (
            "retention",
            YEARLY.cron,
            "Europe/Paris",
        )
        # Checked again: nothing to do, nothing moved.
        assert await asyncio.gather(*(k.ensure() for k in keepers[:5])) == [[]] * 5
        (next_yearly,) = await _pending_jobs(queue, YEARLY.id)
        # The next job lost (not the scheduler): bullmq alone would never fire it again.
        client = redis.Redis.from_url(as_environment(settings).redis_url)  # a failover's loss
        key = f"{settings.queue_prefix}:{settings.queue_name}"
        client.delete(f"{key}:{next_yearly}")
        client.zrem(f"{key}:delayed", next_yearly)
        client.close()
        assert await _pending_jobs(queue, YEARLY.id) == []
        await queue.upsertJobScheduler("stale", {"every": 60_000}, "retention", {}, options)
        assert sorted(await keepers[0].ensure()) == ["stale", "yearly"]
        assert await _pending_jobs(queue, YEARLY.id) == [next_yearly]
        assert await queue.getJobSchedulersCount() == 2
        assert await _pending_jobs(queue, "stale") == []
    finally:
        for keeper in keepers:
            await keeper.queue.close()
        await queue.close()


def _insert_old_final_upload(settings: Settings, upload_id: str) -> None:
    with psycopg.connect(
        settings.database_url, options=f"-c search_path={settings.database_schema}"
    ) as conn:
        conn.execute(
            "INSERT INTO uploads (id, owner, bucket, key, filename, state, finished_at)"
            " VALUES (%s, 'owner', 'b', %s, 'f', 'processed', now() - interval '100 days')",
            (upload_id, f"uploads/owner/{upload_id}/f"),
        )


def _upload_exists(settings: Settings, upload_id: str) -> bool:
    with psycopg.connect(
        settings.database_url, options=f"-c search_path={settings.database_schema}"
    ) as conn:
        return bool(conn.execute("SELECT 1 FROM uploads WHERE id = %s", (upload_id,)).fetchone())


@pytest.mark.slow
def test_the_worker_runs_a_scheduled_job_again_and_again_and_brings_back_a_lost_schedule(
    settings, redis_admin_url, capsys
):
    """End to end: the worker registers the schedule at start, bullmq-py's worker makes each
    next iteration (the retention job, as the maintenance role, deletes an old final upload on
    its first run), and a schedule whose keys Redis lost comes back within the check period.
    Each run's queue wait is counted from when it was due, not from when it was scheduled."""
    asyncio.run(_runs_and_comes_back(settings, redis_admin_url))
    metrics = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line
    ]
    waits = [m["QueueWait"] for m in metrics if m.get("JobName") == "retention"]
    assert len(waits) >= 4 and max(waits) < 500, waits


async def _runs_and_comes_back(settings: Settings, redis_admin_url: str) -> None:
    every = Schedule("retention", "retention", every_ms=1_000)
    settings = replace(
        settings,
        schedules=(every,),
        schedule_check_s=1,
        maintenance_database_url=role_url(
            settings.database_url, settings.database_schema, "maintenance"
        ),
    )
    _insert_old_final_upload(settings, "u-old")
    queue = open_queue(settings)
    try:
        async with running_worker(settings):

            async def completed_runs() -> list[str]:
                jobs = await queue.getJobs(["completed"])
                return sorted(job.id for job in jobs if job.id.startswith("repeat:retention:"))

            runs = await wait_for(
                lambda: _at_least(completed_runs(), 3), timeout_s=10, interval_s=0.2
            )
            assert len(set(runs)) == len(runs)
            assert not _upload_exists(settings, "u-old")
            deleted = [(await queue.getJob(run)).returnvalue["uploadsDeleted"] for run in runs]
            assert sum(deleted) == 1

            # Redis loses everything of this test's prefix (and only of it).
            delete_keys(redis_admin_url, settings.queue_prefix)
            assert await queue.getJobSchedulersCount() == 0
            await wait_for(queue.getJobSchedulersCount, timeout_s=3, interval_s=0.1)
            # ... and it fires again.
            await wait_for(lambda: _at_least(completed_runs(), 1), timeout_s=5, interval_s=0.2)
    finally:
        await queue.close()


async def _at_least(runs, n: int):
    found = await runs
    return found if len(found) >= n else None


def test_a_due_scheduled_job_counts_as_waiting_so_the_workers_scale_from_zero(settings):
    """No worker runs (scaled to zero): a scheduler's job whose time has come stays in the
    delayed set, since only a worker promotes it. The queue metrics count it as waiting from
    its due time on, so the autoscaling starts a worker for it (stacks/workers.py scales on
    Waiting)."""
    from lambdas.queue_metrics import snapshot

    async def scenario() -> list[tuple[int, int]]:
        keeper = ScheduleKeeper(
            open_queue(as_user(settings, "worker")), (YEARLY,), settings.default_job_options(), 60
        )
        queue = open_queue(settings)
        try:
            await keeper.ensure()
            due = (await queue.getJobScheduler(YEARLY.id))["next"]
            snapshots = [await snapshot(queue, now_ms) for now_ms in (due - 1, due, due + 10)]
            return [(snap.waiting, snap.delayed) for snap in snapshots]
        finally:
            await keeper.queue.close()
            await queue.close()

    assert asyncio.run(scenario()) == [(0, 1), (1, 1), (1, 1)]


def test_a_stopped_keeper_ends_even_when_a_check_swallows_its_cancellation():
    """Shutdown stops the keeper with an event, not only a cancellation: a cancellation that a
    library call swallows must not leave the loop running (a worker then never exited)."""

    class Swallowing(ScheduleKeeper):
        checks = 0

        async def ensure(self) -> list[str]:
            self.checks += 1
            if self.checks > 1:  # only the first cancellation is lost
                await asyncio.sleep(0.2)
                return []
            # A Redis call in flight when the cancel lands, swallowed as a library may do.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.2)
            return []

    async def scenario() -> int:
        keeper = Swallowing(None, (), {}, interval_s=0.05)  # type: ignore[arg-type]
        task = asyncio.ensure_future(keeper.run())
        await asyncio.sleep(0.1)
        keeper.stop()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2)
        assert task in done, "the keeper kept checking after it was stopped"
        return keeper.checks

    assert asyncio.run(scenario()) == 1
