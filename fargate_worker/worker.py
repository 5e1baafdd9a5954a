"""The queue worker: bullmq for dispatch, sandboxed children for the work, PostgreSQL for status.

Order of effects for one attempt, chosen so that a crash anywhere loses nothing and never
records work that did not happen:
1. bullmq moves the job to active (lock taken, attempt counted);
2. the status row is set ``active`` for this attempt (retried until stored);
3. the processor runs in a sandbox child; progress goes to the job and to PostgreSQL;
4. the outcome (completed / retrying / failed) is stored in PostgreSQL (retried until stored);
5. only then does bullmq move the job out of active.
A crash before 5 leaves the job active with an expiring lock: another worker's stalled check
puts it back, it runs again (outputs are deterministic) and a later attempt overwrites the row.

That is a job with a status row: an upload step, or a job a user asked for
(``offload.requested_jobs``: same order of effects, but run in this process, not in a sandbox:
``fargate_worker.requested``). A job whose name is a system job (``fargate_worker.system_jobs``:
scheduled by the worker itself, no upload behind it) skips 2-4: it runs in this process, with
no status row, its outcome in the logs and metrics (``_process_system_job``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any, NoReturn

from bullmq import UnrecoverableError

from fargate_worker import processors
from fargate_worker.bull_worker import BullWorker
from fargate_worker.errors import AttemptFailed, PermanentJobError, job_error_message
from fargate_worker.finalize import Finalizer
from fargate_worker.health import heartbeat
from fargate_worker.progress import ProgressForwarder
from fargate_worker.protection import TaskProtection
from fargate_worker.queues import WorkerQueues
from fargate_worker.requested import RequestedJobRunner
from fargate_worker.running_metric import report_running
from fargate_worker.s3grants import JobGrants
from fargate_worker.sandbox import SandboxPool
from fargate_worker.schedules import ScheduleKeeper
from fargate_worker.system_jobs import SystemJobRunner
from offload.aws import client, s3_client
from offload.db.credentials import database_url_source
from offload.db.pool import create_pool
from offload.db.status import JobIdentity, StatusStore
from offload.jobs import InvalidJobData, JobRef
from offload.metrics import MetricsEmitter
from offload.pipelines import FINALIZE
from offload.queue import open_queue
from offload.redis_conn import redact, settings_connection_options
from offload.schedules import ScheduleError, check_patterns
from offload.settings import Settings, SettingsError
from offload.user_errors import redact as hide_internal_names

log = logging.getLogger(__name__)

# How long a shutdown waits for the schedule check in progress.
SCHEDULE_STOP_S = 5.0


def worker_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "connection": settings_connection_options(settings),
        "prefix": settings.queue_prefix,
        "concurrency": settings.concurrency,
        "lockDuration": settings.lock_duration_ms,
        "stalledInterval": settings.stalled_interval_ms,
        "maxStalledCount": settings.max_stalled_count,
        "drainDelay": settings.drain_delay_s,
        "removeOnComplete": settings.remove_on_complete,
        "removeOnFail": settings.remove_on_fail,
        "autorun": False,
    }
    if settings.limiter_max:
        options["limiter"] = {"max": settings.limiter_max, "duration": settings.limiter_duration_ms}
    return options


class OffloadWorker:
    def __init__(self, settings: Settings, *, worker_id: str | None = None):
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.registry: dict[str, processors.Processor] = {}
        self.pool = create_pool(
            database_url_source(settings),
            settings.database_schema,
            max_size=settings.concurrency + 1,
            schema_from_role=settings.database_schema_from_role,
        )
        self.store = StatusStore(self.pool)
        self.finalizer = Finalizer(self.pool, self._s3, self._events, settings.event_bus_name)
        self.sandbox = SandboxPool(settings, settings.concurrency)
        self.protection = TaskProtection(settings.ecs_agent_uri, settings.task_protection_minutes)
        self.metrics = MetricsEmitter(settings.metrics_namespace, {"Queue": settings.queue_name})
        self.system = SystemJobRunner(settings)
        self.requested = RequestedJobRunner(self.pool, self._s3)
        self.schedules: ScheduleKeeper | None = None
        self.queues: WorkerQueues | None = None
        self.bull: BullWorker | None = None  # the main queue's (self.queues.main)
        self._run_task: asyncio.Task | None = None
        self._schedule_task: asyncio.Task | None = None
        self._heartbeat: asyncio.Task | None = None
        self._running_metric: asyncio.Task | None = None
        self._active = 0
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        self.registry = processors.load(self.settings.processor_modules)
        self._check_job_names()
        # wait=False: the worker starts (and keeps its queue locks) even while PostgreSQL is
        # down; writes wait for it instead.
        await self.pool.open(wait=False)
        await self.sandbox.start()
        # The main queue and every step queue, one bullmq Worker each, sharing this process's
        # OFFLOAD_CONCURRENCY job slots (fargate_worker/queues.py).
        self.queues = WorkerQueues(
            self.settings,
            self._process,
            worker_options(self.settings),
            on_deferred_failure=self._record_deferred_failure,
        )
        self.bull = self.queues.main
        self.queues.on("error", self._on_error)
        self.queues.on(
            "stalled", lambda job_id, *_: log.warning("job stalled", extra={"job_id": job_id})
        )
        await self.queues.start()
        self._run_task = asyncio.ensure_future(self.queues.wait_stopped())
        self.schedules = ScheduleKeeper(
            open_queue(self.settings),
            self.settings.schedules,
            self.settings.default_job_options(),
            self.settings.schedule_check_s,
        )
        self._schedule_task = asyncio.ensure_future(self.schedules.run())
        self._heartbeat = asyncio.ensure_future(
            heartbeat(self.settings.health_file, self.settings.health_interval_s, self._health)
        )
        # what the autoscaling divides the backlog by (fargate_worker/running_metric.py)
        self._running_metric = asyncio.ensure_future(report_running(self.metrics))
        log.info(
            "worker started on %s, queues %s",
            redact(self.settings.redis_url),  # never the credentials
            ", ".join(self.queues.workers),
            extra={
                "worker_id": self.worker_id,
                "state": f"concurrency={self.settings.concurrency}",
            },
        )

    def _check_job_names(self) -> None:
        """No name is two of a processor, a system job, a requested job and ``finalize`` (the
        name decides how a job runs), and every schedule names a system job with a cron pattern
        bullmq can read: a SettingsError at start, not a job that fails at 3 a.m."""
        kinds = (
            set(self.registry),
            set(self.system.jobs),
            set(self.requested.names),
            {FINALIZE},
        )
        overlap = sorted(
            name
            for i, names in enumerate(kinds)
            for name in names
            if any(name in other for other in kinds[i + 1 :])
        )
        if overlap:
            raise SettingsError(
                f"processors, system jobs and requested jobs share the names {overlap}"
            )
        for schedule in self.settings.schedules:
            if schedule.job not in self.system:
                known = ", ".join(sorted(self.system.jobs))
                raise SettingsError(
                    f"OFFLOAD_SCHEDULES: schedule {schedule.id!r} names {schedule.job!r}, which"
                    f" is not a system job (known: {known})"
                )
        try:
            check_patterns(self.settings.schedules)
        except ScheduleError as exc:
            raise SettingsError(f"OFFLOAD_SCHEDULES: {exc}") from exc

    def _health(self) -> dict[str, Any]:
        return {"worker_id": self.worker_id, "active_jobs": self._active}

    def _on_error(self, error: Exception, *_: Any) -> None:
        log.error("queue error: %s", error, extra={"worker_id": self.worker_id})

    def _identity(self, job: Any) -> tuple[JobIdentity, int, int]:
        """The job's status identity, this attempt's number and the job's attempt limit."""
        attempt = max(job.attemptsStarted, job.attemptsMade + 1)
        max_attempts = int(job.opts.get("attempts") or 1)
        try:
            ref: JobRef | None = JobRef.from_data(job.data)
        except InvalidJobData:
            ref = None
        parent = job.parent if isinstance(job.parent, dict) else {}
        parent_id = parent.get("id") if isinstance(parent.get("id"), str) else None
        queue = job.queue.name  # the main queue or a step queue (the job's Worker)
        return JobIdentity(job.id, job.name, queue, ref, parent_id), attempt, max_attempts

    def _internal_names(self, ref: JobRef | None = None) -> tuple[str, ...]:
        """Names a job's user-facing error must not carry: the buckets."""
        return (self.settings.upload_bucket, *((ref.bucket,) if ref else ()))

    async def _record_deferred_failure(self, job: Any) -> None:
        """bullmq is about to fail this job without running it (see BullWorker): store it."""
        if job.name in self.system:
            self._emit_done(job, "failed", time.monotonic())
            log.error(
                "system job failed without running",
                extra={"job_id": job.id, "job_name": job.name, "error": str(job.deferredFailure)},
            )
            return
        identity, attempt, max_attempts = self._identity(job)
        reason = hide_internal_names(str(job.deferredFailure), self._internal_names(identity.ref))
        await self.store.mark_failed_unrun(identity, attempt, max_attempts, self.worker_id, reason)
        if job.name == FINALIZE and identity.ref is not None:
            await self._fail_flow(job, identity.ref, str(job.deferredFailure), reason)
        self._emit_done(job, "failed", time.monotonic())
        log.error(
            "job failed without running",
            extra={"job_id": job.id, "job_name": job.name, "attempt": attempt, "error": reason},
        )

    async def _fail_flow(self, job: Any, ref: JobRef, deferred: str, reason: str) -> None:
        """A flow's parent fails without running: its upload moves to ``failed``, naming the
        step. A child that failed for good leaves ``child <its key> failed`` (bullmq's
        moveToFinished): the step and its public reason come from the child's status row
        (written before the child moved), else from its Redis hash (a Node worker's child).
        Any other deferred failure (the stall limit) is the parent's own: ``finalize``."""
        step, why = FINALIZE, reason
        rows = {row["id"]: row for row in await self.finalizer.child_rows(job.id)}
        if deferred.startswith("child ") and deferred.endswith(" failed"):
            child_key = deferred[len("child ") : -len(" failed")]
            child_id = child_key.rsplit(":", 1)[-1]
            row = rows.get(child_id)
            if row is not None:
                step, why = row["name"], row["error_message"] or reason
            else:
                name, failed = await job.backend.connection.conn.hmget(
                    child_key, ["name", "failedReason"]
                )
                step, why = name or child_id, failed or reason
        why = hide_internal_names(str(why), self._internal_names(ref))
        await self.finalizer.fail(job.id, ref, str(step), why, [job.id, *sorted(rows)])

    async def _process(self, job: Any, token: str) -> Any:
        if job.name in self.system:
            return await self._process_system_job(job)
        return await self._process_tracked(job)

    async def _process_system_job(self, job: Any) -> Any:
        """A system job (module docstring): run here, outcome logged and counted, no row."""
        started = time.monotonic()
        attempt = max(job.attemptsStarted, job.attemptsMade + 1)
        context = {"job_id": job.id, "job_name": job.name, "attempt": attempt}
        self._active += 1
        await self.protection.job_started()
        try:
            result = await self.system.run(job)
            self._emit_done(job, "completed", started)
            log.info(
                "system job completed",
                extra=context
                | {"duration_ms": round((time.monotonic() - started) * 1000), "counts": result},
            )
            return result
        except asyncio.CancelledError:
            log.warning("system job abandoned at shutdown", extra=context)
            raise
        except Exception as exc:
            failure = _Failure.of(job, exc, (UnrecoverableError,), self._internal_names())
            if failure.final:
                self._emit_done(job, "failed", started)
                log.error("system job failed", extra=context | failure.fields)
            else:
                log.warning("system job attempt failed, will retry", extra=context | failure.fields)
            failure.raise_for_bullmq(exc)
        finally:
            self._active -= 1
            await self.protection.job_finished()

    async def _process_tracked(self, job: Any) -> Any:
        """A job with a status row (module docstring): an upload step or a requested job."""
        started = time.monotonic()
        identity, attempt, max_attempts = self._identity(job)
        ref = identity.ref
        context = {"job_id": job.id, "job_name": job.name, "attempt": attempt}
        self._active += 1
        await self.protection.job_started()
        try:
            await self.store.mark_active(identity, attempt, max_attempts, self.worker_id)
            # DEBUG: the start is recorded in PostgreSQL (state, started_at, event); at INFO a
            # job logs one line, with its outcome and duration.
            log.debug("job started", extra=context)
            result = await self._run_tracked(job, attempt, ref)
            await self.store.mark_completed(job.id, attempt, result)
            self._emit_done(job, "completed", started)
            log.info(
                "job completed",
                extra=context | {"duration_ms": round((time.monotonic() - started) * 1000)},
            )
            return result
        except asyncio.CancelledError:
            # Forced shutdown: the job stays active in Redis and stalled recovery hands it to
            # another worker. Nothing is recorded: this attempt neither failed nor finished.
            log.warning("job abandoned at shutdown", extra=context)
            raise
        except Exception as exc:
            failure = _Failure.of(job, exc, _PERMANENT, self._internal_names(ref))
            message, stack = failure.message, failure.stack
            if failure.final:
                await self.store.mark_failed(job.id, attempt, message, stack)
                if job.name == FINALIZE and ref is not None:
                    await self._finalize_failed(job, ref, message)
                self._emit_done(job, "failed", started)
                log.error("job failed", extra=context | failure.fields)
            else:
                await self.store.mark_retrying(job.id, attempt, message, stack)
                log.warning("job attempt failed, will retry", extra=context | failure.fields)
            failure.raise_for_bullmq(exc)
        finally:
            self._active -= 1
            await self.protection.job_finished()

    async def _finalize_failed(self, job: Any, ref: JobRef, message: str) -> None:
        """``finalize`` itself failed for good: the upload fails at that step. Best effort past
        the job's own row: the job's failure is recorded whatever becomes of the event."""
        try:
            rows = await self.finalizer.child_rows(job.id)
            await self.finalizer.fail(
                job.id, ref, FINALIZE, message, [job.id, *(row["id"] for row in rows)]
            )
        except Exception as exc:
            log.error(
                "upload not marked failed after its finalize failed: %s",
                exc,
                extra={"job_id": job.id, "upload_id": ref.upload_id},
            )

    async def _run_tracked(self, job: Any, attempt: int, ref: JobRef | None) -> Any:
        """Where a job with a status row runs: a flow's ``finalize`` and a requested job here,
        in the worker process (``fargate_worker.finalize`` and ``fargate_worker.requested`` say
        why), an upload step in a sandbox child."""
        if job.name != FINALIZE and job.name not in self.requested:
            return await self._run_in_sandbox(job, attempt, ref)
        if ref is None:
            JobRef.from_data(job.data)  # raises the precise InvalidJobData message
            raise AssertionError("unreachable: the job data did not parse the first time")
        if job.name == FINALIZE:
            return await self.finalizer.run(job, ref)
        return await self.requested.run(job.name, ref)

    async def _run_in_sandbox(self, job: Any, attempt: int, ref: JobRef | None) -> Any:
        processor = self.registry.get(job.name)
        if processor is None:
            known = ", ".join(sorted(self.registry)) or "none"
            raise UnrecoverableError(f"unknown job name {job.name!r} (known: {known})")
        if ref is None:
            JobRef.from_data(job.data)  # raises the precise InvalidJobData message
            raise AssertionError("unreachable: the job data did not parse the first time")
        forward = ProgressForwarder(job, self.store, attempt)
        try:
            return await self.sandbox.run(
                job.id,
                job.name,
                attempt,
                job.data,
                processor.timeout_s or self.settings.job_timeout_s,
                forward,
                JobGrants(ref, self._s3),
            )
        finally:
            await forward.close()

    def _s3(self) -> Any:
        """The client that signs the sandbox children's S3 requests (``s3grants.py``): made at
        the first request, off the event loop (making one resolves the credentials)."""
        return s3_client(self.settings.s3_endpoint_url)

    def _events(self) -> Any:
        """The EventBridge client an upload's final state is published with (made at the
        first event, off the event loop)."""
        return client("events", self.settings.events_endpoint_url)

    def _emit_done(self, job: Any, outcome: str, started: float) -> None:
        metrics = {
            "JobsCompleted" if outcome == "completed" else "JobsFailed": (1, "Count"),
            "JobDuration": (round((time.monotonic() - started) * 1000, 1), "Milliseconds"),
        }
        if job.processedOn and job.timestamp:
            wait_ms = max(0, int(job.processedOn) - _ready_at(job))
            metrics["QueueWait"] = (wait_ms, "Milliseconds")
        self.metrics.emit(metrics, {"JobName": job.name, "JobId": job.id})

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    async def shutdown(self, grace_s: float | None = None) -> bool:
        """Stop taking jobs, give running ones ``grace_s`` to finish, then abandon them to
        stalled recovery. Returns True when every running job finished."""
        grace_s = self.settings.shutdown_grace_s if grace_s is None else grace_s
        assert self.queues is not None
        log.info(
            "shutting down", extra={"worker_id": self.worker_id, "state": f"{self._active} active"}
        )
        if self.schedules is not None:
            self.schedules.stop()
        if self._schedule_task is not None:
            self._schedule_task.cancel()
            # Bounded: a check stuck on Redis must not hold the shutdown (the keeper's
            # connection is closed next, which ends any call still in flight).
            await asyncio.wait({self._schedule_task}, timeout=SCHEDULE_STOP_S)
        if self.schedules is not None:
            await self.schedules.queue.close()
        close = asyncio.ensure_future(self.queues.close())
        done, _ = await asyncio.wait({close}, timeout=grace_s)
        clean = close in done
        if not clean:
            log.warning("grace period over, abandoning running jobs to stalled recovery")
            await self.queues.close(force=True)
            await asyncio.gather(close, return_exceptions=True)
        if self._run_task is not None:
            await asyncio.gather(self._run_task, return_exceptions=True)
        await self.sandbox.close()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._running_metric is not None:
            self._running_metric.cancel()
        await self.pool.close()
        return clean


_SCHEDULED_ID = re.compile(r"repeat:[^:]+:([0-9]+)")


def _ready_at(job: Any) -> int:
    """When the job could first run (epoch ms). A scheduler's job is due at the time its id
    names (``repeat:<id>:<millis>``); bullmq sets a delayed job's ``delay`` to 0 when it
    promotes it, so ``timestamp + delay`` would count a whole schedule period (a day for the
    daily retention) as queue wait."""
    if job.repeatJobKey and (due := _SCHEDULED_ID.fullmatch(str(job.id))):
        return int(due.group(1))
    return int(job.timestamp) + int(job.delay or 0)


# The errors that fail an upload step or a requested job for good: retrying cannot help.
_PERMANENT = (PermanentJobError, InvalidJobData, UnrecoverableError)


@dataclass(frozen=True)
class _Failure:
    """A failed attempt: whether it is the job's last, what its user reads (``message``) and
    the whole story (``stack``, the ``error_stack`` column and the logs)."""

    permanent: bool
    final: bool
    message: str
    stack: str

    @classmethod
    def of(
        cls,
        job: Any,
        exc: Exception,
        permanent_types: tuple[type[BaseException], ...],
        internal_names: tuple[str, ...],
    ) -> _Failure:
        permanent = isinstance(exc, permanent_types)
        # bullmq's own rule (stalls count in attemptsStarted, not in attemptsMade)
        final = permanent or job.attemptsMade + 1 >= int(job.opts.get("attempts") or 1)
        return cls(permanent, final, job_error_message(exc, internal_names), _stack_of(exc))

    @property
    def fields(self) -> dict[str, str]:
        return {"error": self.message, "stack": self.stack}

    def raise_for_bullmq(self, exc: Exception) -> NoReturn:
        """bullmq keeps str() of what it gets as the failed reason: the same public message;
        an UnrecoverableError stops its retries."""
        if self.permanent:
            raise UnrecoverableError(self.message) from exc
        raise AttemptFailed(self.message) from exc


def _stack_of(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
