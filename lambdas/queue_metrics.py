"""Queue metrics Lambda (every minute): the queue's backlog as CloudWatch metrics.

The autoscaling policy of the workers and the backlog alarms read these metrics, so they are
published with ``PutMetricData`` (visible to alarms within seconds) rather than EMF (extracted
from the log stream asynchronously, which can lag by minutes). Metrics, namespace
``OFFLOAD_METRICS_NAMESPACE``, dimension ``Queue=<queue name>``, standard resolution:

* ``Waiting`` (Count): jobs ready to run (bullmq ``wait`` + ``prioritized``, and delayed jobs
  whose time has come: :func:`due_delayed`);
* ``Active``, ``Delayed``, ``Failed`` (Count);
* ``OldestWaitingAge`` (Seconds): how long the job at the head of the wait list has been
  waiting; 0 when nothing waits.

The names are the ones ``stacks/metrics.py`` scales and alarms on. Zeros are published too:
scale-to-zero and "backlog of 1" alarms need a datapoint every minute. When Redis does not
answer, the function fails and publishes nothing (zeros would scale the workers in during an
outage). Backlog per task is computed from these by CloudWatch metric math in the stack.
bullmq-py has no ``getMetrics``: counts come from ``Queue.getJobCounts``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger
from bullmq import Queue

from lambdas import runtime
from lambdas.tracing import traced
from offload import aws
from offload.queue import open_queue
from offload.settings import Settings

logger = Logger()

SAFETY_MARGIN_S = 2.0
_COUNTED = ("wait", "prioritized", "active", "delayed", "failed")


@dataclass(frozen=True)
class QueueSnapshot:
    waiting: int
    active: int
    delayed: int
    failed: int
    oldest_waiting_age_s: float


def waiting_since_ms(job: Any) -> int:
    """When a waiting job became ready: its add time (plus its delay, while bullmq still keeps
    it) or the start of its last attempt for a retried job, whichever is later. bullmq does not
    record when a retried job re-entered the wait list, so for those the age is counted from
    the start of the failed attempt (an overestimate by that attempt's run time + backoff)."""
    added = int(getattr(job, "timestamp", 0) or 0) + int(getattr(job, "delay", 0) or 0)
    return max(added, int(getattr(job, "processedOn", 0) or 0))


# At most this many due delayed jobs are counted (one read of their ids): enough to scale out.
DUE_COUNT_MAX = 1_000


async def due_delayed(queue: Queue, now_ms: int) -> int:
    """Delayed jobs whose time has come (a scheduled job, a retry past its backoff). Only a
    worker moves them to the wait list (bullmq promotes them in ``moveToActive``): with no
    worker running they never reach ``wait``, and a scheduler's job (``OFFLOAD_SCHEDULES``)
    would wait for the next upload to start a worker. Counted as waiting, they scale the
    workers out from zero. A delayed job's score is its due time in ms times 0x1000 (plus a
    counter below 0x1000): every score below ``(now_ms + 1) * 0x1000`` is due."""
    due = await queue.client.zrange(
        queue.toKey("delayed"),
        0,
        (now_ms + 1) * 0x1000 - 1,
        byscore=True,
        offset=0,
        num=DUE_COUNT_MAX,
    )
    return len(due)


async def snapshot(queue: Queue, now_ms: int | None = None) -> QueueSnapshot:
    counts = await queue.getJobCounts(*_COUNTED)
    # The wait list is FIFO: its oldest entry is the next one a worker takes.
    oldest = await queue.getJobs(["wait"], 0, 0, True)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    age_s = max(0.0, (now_ms - waiting_since_ms(oldest[0])) / 1000) if oldest else 0.0
    due = await due_delayed(queue, now_ms)
    return QueueSnapshot(
        waiting=counts.get("wait", 0) + counts.get("prioritized", 0) + due,
        active=counts.get("active", 0),
        delayed=counts.get("delayed", 0),
        failed=counts.get("failed", 0),
        oldest_waiting_age_s=round(age_s, 3),
    )


def metric_data(snap: QueueSnapshot, queue_name: str, at: datetime) -> list[dict[str, Any]]:
    dimensions = [{"Name": "Queue", "Value": queue_name}]
    values = (
        ("Waiting", snap.waiting, "Count"),
        ("Active", snap.active, "Count"),
        ("Delayed", snap.delayed, "Count"),
        ("Failed", snap.failed, "Count"),
        ("OldestWaitingAge", snap.oldest_waiting_age_s, "Seconds"),
    )
    return [
        {
            "MetricName": name,
            "Dimensions": dimensions,
            "Timestamp": at,
            "Value": float(value),
            "Unit": unit,
            "StorageResolution": 60,
        }
        for name, value, unit in values
    ]


# One Queue (one Redis connection) per container and event loop. The metrics function needs
# neither PostgreSQL nor the producer, so it keeps a queue of its own instead of
# runtime.producer() (which would open a database pool).
_queue: tuple[asyncio.AbstractEventLoop, Settings, Queue] | None = None


async def _container_queue(settings: Settings) -> Queue:
    global _queue
    loop = asyncio.get_running_loop()
    if _queue is None or _queue[0] is not loop or _queue[1] is not settings:
        if _queue is not None and _queue[0] is loop:
            await _queue[2].close()
        _queue = (loop, settings, open_queue(settings))
    return _queue[2]


async def _collect(settings: Settings) -> QueueSnapshot:
    return await snapshot(await _container_queue(settings))


def close() -> None:
    """Close the container's queue (tests, before ``runtime.reset()``)."""
    global _queue
    if _queue is not None and not _queue[0].is_closed():
        runtime.run(_queue[2].close())
    _queue = None


def _publish(event: dict[str, Any], context: Any) -> dict[str, Any]:
    settings = runtime.settings()
    budget = context.get_remaining_time_in_millis() / 1000 - SAFETY_MARGIN_S
    snap = runtime.run(asyncio.wait_for(_collect(settings), max(budget, 0.1)))
    at = datetime.now(UTC)
    aws.client("cloudwatch").put_metric_data(
        Namespace=settings.metrics_namespace,
        MetricData=metric_data(snap, settings.queue_name, at),
    )
    published = asdict(snap) | {"queue": settings.queue_name}
    logger.info("queue metrics published", extra=published)
    return published


_handle = traced(_publish)


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return _handle(event, context)
