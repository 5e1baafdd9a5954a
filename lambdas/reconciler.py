"""Reconciler Lambda (scheduled, e.g. every 5 minutes): re-enqueue what Redis lost.

PostgreSQL is the source of truth; this function puts back into the queue the uploads that are
in S3 without their jobs and the jobs PostgreSQL has in flight that the queue no longer knows,
settles rows whose job the queue has already finished, and aborts pending multipart uploads
whose part URLs expired more than ``OFFLOAD_EXPIRED_UPLOAD_GRACE_S`` ago (default 3600 s; see
``offload.reconcile``). Work
per run is bounded by ``OFFLOAD_RECONCILE_LIMIT`` rows per repair (default 500); rows count as
stuck after ``OFFLOAD_RECONCILE_AFTER_S`` (default 600 s). The counts are logged and published
as EMF metrics (namespace ``OFFLOAD_METRICS_NAMESPACE``, dimension ``Queue``). A failure
(PostgreSQL or Redis down) fails the invocation: the next scheduled run starts over, and every
repair is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit

from lambdas import runtime
from lambdas.tracing import traced
from offload.reconcile import Reconciler, ReconcileReport

logger = Logger()
metrics = Metrics()
# offload.* modules log through the standard library: same JSON format and Lambda context.
logging.getLogger("offload")  # registered now, so the copy below finds it
copy_config_to_registered_loggers(source_logger=logger, include={"offload"})

# Kept back from the run's budget: a cancelled PostgreSQL query can take ~10 s to give the
# connection up (psycopg's cancel request, then its wait for the query), see lambdas/enqueue.
SAFETY_MARGIN_S = 12.0
_METRICS = {
    "UploadsPendingChecked": "pending_checked",
    "UploadsFoundWithoutEvent": "uploads_found",
    "UploadsRequeued": "uploads_requeued",
    "UploadsDeferred": "uploads_deferred",
    "JobsEnqueuedByReconciler": "jobs_enqueued",
    "JobsChecked": "jobs_checked",
    "JobsMissing": "jobs_missing",
    "JobsRequeued": "jobs_requeued",
    "JobsUnrecoverable": "jobs_unrecoverable",
    "JobsSettled": "jobs_settled",
    "UploadsExpiredAborted": "expired_aborted",
    "UploadsExpiredAbortFailed": "expired_abort_failed",
}


async def _reconcile() -> ReconcileReport:
    settings = runtime.settings()
    reconciler = Reconciler(
        settings, await runtime.pool(), await runtime.producer(), limit=settings.reconcile_limit
    )
    return await reconciler.run()


@metrics.log_metrics
def _reconcile_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    settings = runtime.settings()
    metrics.namespace = settings.metrics_namespace
    metrics.add_dimension(name="Queue", value=settings.queue_name)
    budget = context.get_remaining_time_in_millis() / 1000 - SAFETY_MARGIN_S
    report = runtime.run(asyncio.wait_for(_reconcile(), max(budget, 0.1)))
    for name, attribute in _METRICS.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=getattr(report, attribute))
    logger.info("reconciled", extra=report.as_dict())
    return report.as_dict()


_handle = traced(_reconcile_handler)


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return _handle(event, context)
