"""Enqueue Lambda: S3 ObjectCreated -> SQS -> this function -> jobs in Redis, rows in PostgreSQL.

Each SQS message is one record of a partial batch (Powertools ``BatchProcessor``): a record that
fails is reported in ``batchItemFailures`` and only that message comes back; the others are
deleted. What becomes of a message:

* ``s3:TestEvent``, non-ObjectCreated events, keys outside ``uploads/``: skipped (success).
* a message that is not an S3 notification (bad JSON, missing fields): logged with the reason and
  **failed**, so it is redelivered and lands in the DLQ after ``maxReceiveCount`` (a poison
  message is never silently dropped; the DLQ depth alarm shows it).
* an object without a valid upload behind it (forged key, no row) or with the wrong size:
  rejected, logged, no job; the row, if any, is marked ``rejected`` (success: retrying cannot
  change the answer). The object stays for the bucket's lifecycle rules.
* otherwise the row is marked ``uploaded`` with the object's real size and ETag, the object's
  first KiB is read (one ranged GET) and sniffed into a content type, which picks the upload's
  pipeline (``offload.pipelines``); its flow is started (``finalize`` with the pipeline's steps
  as children, ``offload.flows``) and the row is marked ``queued`` with the detected type
  (success).
* an object other than the one the row names (the key written again while its presigned POST
  was valid): if it is the key's current version (a HEAD of the key), the row moves to it and
  its jobs are enqueued under new ids (or wait for the reconciler while an older version's
  jobs still run: ``deferred``); an older version's event is ignored (success).
* PostgreSQL or Redis unavailable: the record fails (SQS redelivers it; the DLQ keeps it after
  ``maxReceiveCount``). Each record gets at most ``OFFLOAD_ENQUEUE_RECORD_TIMEOUT_S`` (and never
  more than the invocation has left), and once a dependency failed, later records that need it
  fail at once instead of each waiting out the timeout.

The object's size and ETag come from the event; the object is HEADed only when the event lacks
them (S3 always sends both for ObjectCreated; the HEAD is a fallback for other producers), and
the key (without version id) only when the event is not about the object the row names, or
would reject the upload. The normal path makes one S3 call: the ranged GET of the first KiB
(none again for a repeated event: the detected type is on the row).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from lambdas import runtime
from lambdas.tracing import traced
from offload import aws
from offload.jobs import JobRef
from offload.pipelines import Pipeline
from offload.s3events import (
    CurrentObject,
    MalformedEvent,
    Outcome,
    S3ObjectEvent,
    accept_object,
    head_current_object,
    not_found,
    parse_message,
    sniff_object,
    upload_jobs,
)

if TYPE_CHECKING:
    from offload.db.uploads import Upload

logger = Logger()
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
# offload.* modules log through the standard library: same JSON format and Lambda context.
logging.getLogger("offload")  # registered now, so the copy below finds it
copy_config_to_registered_loggers(source_logger=logger, include={"offload"})

# Time kept back so the partial-batch answer is returned before the function times out (a
# timeout would send the whole batch back, including the records that succeeded). A budget
# that runs out while a PostgreSQL query hangs ends up to ~10 s late: psycopg first sends the
# server a cancel request, then waits for the query to end (5 s each at most).
SAFETY_MARGIN_S = 12.0

# The errors that mean "this dependency is unavailable", by module and class name. psycopg and
# redis (~250 ms together) are loaded by the first record that reaches PostgreSQL (runtime.pool)
# and Redis (runtime.producer), not by this import: a batch of test events, skipped keys or
# malformed messages never loads them. An error from either library means it is loaded, so the
# classes are looked up in sys.modules when an error is classified (a library that is not
# loaded raised nothing: no class to match).
_REDIS_ERRORS = {"redis.exceptions": ("ConnectionError", "TimeoutError")}
_DATABASE_ERRORS = {
    "psycopg": ("OperationalError", "InterfaceError"),
    "psycopg_pool": ("PoolTimeout",),
}


def _loaded(errors: dict[str, tuple[str, ...]]) -> tuple[type[BaseException], ...]:
    return tuple(
        getattr(module, name)
        for module_name, names in errors.items()
        if (module := sys.modules.get(module_name)) is not None
        for name in names
    )


class DependencyUnavailable(RuntimeError):
    """PostgreSQL or Redis did not answer; the message is retried by SQS."""


class _Dependencies:
    """Which dependency failed during this invocation, so later records that need it fail at
    once (they come back with SQS's redelivery) instead of each waiting out its timeout."""

    def __init__(self) -> None:
        self.down: dict[str, str] = {}
        self.stage = "postgres"

    def enter(self, name: str) -> None:
        if name in self.down:
            raise DependencyUnavailable(
                f"{name} unavailable earlier in this batch: {self.down[name]}"
            )
        self.stage = name

    def trip(self, name: str, reason: str) -> None:
        self.down.setdefault(name, reason)


_deps = _Dependencies()


def _run(coro: Coroutine[Any, Any, Outcome], context: Any) -> Outcome:
    """Run on the container's loop within the record's time budget."""
    remaining_s = context.get_remaining_time_in_millis() / 1000 if context else float("inf")
    budget = min(runtime.settings().enqueue_record_timeout_s, remaining_s - SAFETY_MARGIN_S)
    if budget <= 0:
        coro.close()
        raise DependencyUnavailable("no time left in this invocation; the message is retried")
    try:
        return runtime.run(asyncio.wait_for(coro, budget))
    except TimeoutError as exc:
        reason = f"no answer within {budget:.1f}s"
        _deps.trip(_deps.stage, reason)
        raise DependencyUnavailable(f"{_deps.stage}: {reason}") from exc
    except _loaded(_REDIS_ERRORS) as exc:
        _deps.trip("redis", exc.__class__.__name__)
        raise
    except _loaded(_DATABASE_ERRORS) as exc:
        _deps.trip("postgres", exc.__class__.__name__)
        raise


async def _accept(event: S3ObjectEvent) -> Outcome:
    _deps.enter("postgres")
    uploads = await runtime.uploads()
    producer = await runtime.producer()

    async def start_flow(
        pipeline: Pipeline, ref: JobRef, states: Mapping[str, str], upload: Upload
    ) -> tuple[str, ...]:
        _deps.enter("redis")  # Producer.start_flow: status rows (PostgreSQL), then the queue
        added = await producer.start_flow(pipeline, ref, states, upload)
        _deps.stage = "postgres"  # not in a finally: a timeout must be blamed on this stage
        return added

    async def sniff(upload: Upload) -> str | None:
        _deps.enter("s3")
        detected = await asyncio.to_thread(_sniff, upload)
        _deps.stage = "postgres"
        return detected

    async def head_current(bucket: str, key: str) -> CurrentObject | None:
        _deps.enter("s3")
        current = await asyncio.to_thread(_head_current, bucket, key)
        _deps.stage = "postgres"
        return current

    pool = await runtime.pool()
    return await accept_object(
        event,
        uploads,
        start_flow,
        lambda upload_id: upload_jobs(pool, upload_id),
        head_current,
        sniff,
    )


def _sniff(upload: Upload) -> str | None:
    return sniff_object(aws.s3_client(runtime.settings().s3_endpoint_url), upload)


def _head_current(bucket: str, key: str) -> CurrentObject | None:
    return head_current_object(aws.s3_client(runtime.settings().s3_endpoint_url), bucket, key)


def _head(event: S3ObjectEvent) -> S3ObjectEvent | None:
    """Size and ETag from S3 when the event lacked them; None if the object is gone."""
    from botocore.exceptions import ClientError

    params = {"Bucket": event.bucket, "Key": event.key}
    if event.version_id:
        params["VersionId"] = event.version_id
    try:
        head = aws.s3_client(runtime.settings().s3_endpoint_url).head_object(**params)
    except ClientError as exc:
        if not_found(exc):
            return None
        raise
    return event.with_head(head)


def _handle_event(event: S3ObjectEvent, fields: dict[str, Any], context: Any) -> None:
    fields = fields | {"bucket": event.bucket, "key": event.key, "event_name": event.event_name}
    if not event.is_object_created or not event.is_upload:
        logger.info("event skipped: not an upload object creation", extra=fields)
        metrics.add_metric(name="EventsSkipped", unit=MetricUnit.Count, value=1)
        return
    if not event.complete:
        completed = _head(event)
        if completed is None:
            logger.warning("object no longer exists; nothing to enqueue", extra=fields)
            metrics.add_metric(name="ObjectsIgnored", unit=MetricUnit.Count, value=1)
            return
        event = completed
    outcome = _run(_accept(event), context)
    fields |= {
        "upload_id": outcome.upload_id,
        "size": event.size,
        "etag": event.etag,
        "version_id": event.version_id,
    }
    if outcome.status == "accepted":
        logger.info("upload queued", extra=fields | {"job_ids": list(outcome.job_ids)})
        metrics.add_metric(name="ObjectsAccepted", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="JobsEnqueued", unit=MetricUnit.Count, value=len(outcome.job_ids))
    elif outcome.status == "deferred":
        logger.info("upload deferred", extra=fields | {"reason": outcome.reason})
        metrics.add_metric(name="ObjectsDeferred", unit=MetricUnit.Count, value=1)
    elif outcome.status == "rejected":
        logger.warning("object rejected: no job", extra=fields | {"reason": outcome.reason})
        metrics.add_metric(name="ObjectsRejected", unit=MetricUnit.Count, value=1)
    else:
        logger.info("event ignored", extra=fields | {"reason": outcome.reason})
        metrics.add_metric(name="ObjectsIgnored", unit=MetricUnit.Count, value=1)


def record_handler(record: SQSRecord, lambda_context: Any = None) -> None:
    fields = {
        "message_id": record.message_id,
        "receive_count": record.attributes.approximate_receive_count,
    }
    try:
        notification = parse_message(record.body)
    except MalformedEvent as exc:
        logger.error(
            "malformed message: failed, dead-lettered after maxReceiveCount",
            extra=fields | {"reason": str(exc)},
        )
        metrics.add_metric(name="MessagesMalformed", unit=MetricUnit.Count, value=1)
        raise
    if notification.test_event:
        logger.info("s3:TestEvent skipped", extra=fields | {"bucket": notification.bucket})
        metrics.add_metric(name="EventsSkipped", unit=MetricUnit.Count, value=1)
        return
    try:
        for event in notification.records:
            _handle_event(event, fields, lambda_context)
    except Exception as exc:
        logger.warning(
            "record failed; SQS will deliver it again",
            extra=fields | {"error": f"{exc.__class__.__name__}: {str(exc)[:300]}"},
        )
        metrics.add_metric(name="RecordsFailed", unit=MetricUnit.Count, value=1)
        raise


@metrics.log_metrics
def _process(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _deps
    _deps = _Dependencies()
    settings = runtime.settings()
    metrics.namespace = settings.metrics_namespace
    metrics.add_dimension(name="Queue", value=settings.queue_name)
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )


_handle = traced(_process)


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return _handle(event, context)
