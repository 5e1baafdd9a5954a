"""Queue metrics Lambda (every minute): the queue's backlog as CloudWatch metrics.

The autoscaling policy of the workers and the backlog alarms read these metrics, so they are
published with ``PutMetricData`` (visible to alarms within seconds) rather than EMF (extracted
from the log stream asynchronously, which can lag by minutes), except where the function has
no route to CloudWatch's API (``OFFLOAD_METRICS_EMF``: an environment without NAT gateway or
endpoint), where the same datapoints are EMF lines on stdout (:func:`emit_emf`). Metrics, namespace
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

Every queue is covered: the main one and each step queue (``offload.step_limits``), each under
its own ``Queue`` dimension. The workers' scaling reads one more metric, ``Runnable``
(dimension ``Queue=<main queue>``): the waiting jobs of every queue that workers could start
now, a limited step's counted only up to what its limits let through (its global concurrency
less its active jobs; its rate limit's jobs per window). A backlog that only a limit holds
back does not scale the workers out: more tasks would not run it any sooner.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger
from bullmq import Queue

from lambdas import runtime
from lambdas.tracing import traced
from offload import aws
from offload.metrics import MetricsEmitter
from offload.pipelines import StepLimits
from offload.priorities import all_priorities
from offload.queue import open_queue
from offload.settings import Settings
from offload.step_limits import limited_steps

logger = Logger()

SAFETY_MARGIN_S = 2.0
_COUNTED = ("wait", "prioritized", "active", "delayed", "failed")
RUNNABLE = "Runnable"
# bullmq's score of a prioritised job: priority * 2^32 + a counter of adds (FIFO within one)
_PRIORITY_SCORE = 0x100000000


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


async def _oldest_prioritized(queue: Queue, priorities: Iterable[int]) -> list[Any]:
    """The oldest job of each priority: bullmq orders the ``prioritized`` set by priority,
    then by adding order, so each priority's first member is its oldest (a ZRANGE BYSCORE of
    one per priority instead of reading the whole set; uploads get a handful of priorities)."""
    key = queue.keys["prioritized"]
    oldest = []
    for priority in priorities:
        low = priority * _PRIORITY_SCORE
        ids = await queue.client.zrange(
            key, low, low + _PRIORITY_SCORE - 1, byscore=True, offset=0, num=1
        )
        if ids and (job := await queue.getJob(ids[0])) is not None:
            oldest.append(job)
    return oldest


async def snapshot(
    queue: Queue, now_ms: int | None = None, priorities: Iterable[int] = ()
) -> QueueSnapshot:
    """The queue's counts, and how long its longest-waiting job has waited: the head of the
    wait list (FIFO: the oldest entry is the next one taken) or the oldest job of any of the
    ``priorities`` (``offload.priorities.all_priorities``: a large upload may wait behind
    small ones)."""
    counts = await queue.getJobCounts(*_COUNTED)
    oldest = await queue.getJobs(["wait"], 0, 0, True)
    if counts.get("prioritized", 0):
        oldest += await _oldest_prioritized(queue, priorities)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    since = min((waiting_since_ms(job) for job in oldest), default=None)
    age_s = max(0.0, (now_ms - since) / 1000) if since is not None else 0.0
    due = await due_delayed(queue, now_ms)
    return QueueSnapshot(
        waiting=counts.get("wait", 0) + counts.get("prioritized", 0) + due,
        active=counts.get("active", 0),
        delayed=counts.get("delayed", 0),
        failed=counts.get("failed", 0),
        oldest_waiting_age_s=round(age_s, 3),
    )


def runnable(snap: QueueSnapshot, limits: StepLimits | None) -> int:
    """The waiting jobs workers could start now: all of them, unless the queue's limits hold
    some back (its free global concurrency; at most one window of its rate limit)."""
    count = snap.waiting
    if limits is not None and limits.max_concurrent is not None:
        count = min(count, max(limits.max_concurrent - snap.active, 0))
    if limits is not None and limits.max_per_window is not None:
        count = min(count, limits.max_per_window)
    return count


def runnable_datum(count: int, queue_name: str, at: datetime) -> dict[str, Any]:
    return {
        "MetricName": RUNNABLE,
        "Dimensions": [{"Name": "Queue", "Value": queue_name}],
        "Timestamp": at,
        "Value": float(count),
        "Unit": "Count",
        "StorageResolution": 60,
    }


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


def emit_emf(namespace: str, data: list[dict[str, Any]]) -> None:
    """The same datapoints as EMF lines on stdout (``OFFLOAD_METRICS_EMF``), one document per
    queue: CloudWatch extracts them from the function's log group, with no API call, so an
    environment whose Lambdas have no route to CloudWatch's API still scales its workers
    (the values land a minute or so later than PutMetricData's)."""
    by_queue: dict[str, dict[str, tuple[float, str]]] = {}
    stamps: dict[str, datetime] = {}
    for datum in data:
        queue = datum["Dimensions"][0]["Value"]
        by_queue.setdefault(queue, {})[datum["MetricName"]] = (datum["Value"], datum["Unit"])
        stamps[queue] = datum["Timestamp"]
    for queue, metrics in by_queue.items():
        MetricsEmitter(namespace, {"Queue": queue}).emit(
            metrics, timestamp_ms=int(stamps[queue].timestamp() * 1000)
        )


# One Queue (one Redis connection) per queue, container and event loop. The metrics function
# needs neither PostgreSQL nor the producer, so it keeps queues of its own instead of
# runtime.producer() (which would open a database pool).
_queues: tuple[asyncio.AbstractEventLoop, Settings, dict[str, Queue]] | None = None


async def _container_queue(settings: Settings, name: str | None = None) -> Queue:
    global _queues
    loop = asyncio.get_running_loop()
    if _queues is None or _queues[0] is not loop or _queues[1] is not settings:
        if _queues is not None and _queues[0] is loop:
            for queue in _queues[2].values():
                await queue.close()
        _queues = (loop, settings, {})
    name = name or settings.queue_name
    if name not in _queues[2]:
        _queues[2][name] = open_queue(settings, name)
    return _queues[2][name]


async def _collect(settings: Settings) -> dict[str, tuple[QueueSnapshot, StepLimits | None]]:
    """Each queue's snapshot with its limits, the main queue first."""
    priorities = all_priorities(settings)
    queues: list[tuple[str, StepLimits | None]] = [(settings.queue_name, None)]
    queues += [(step.queue(settings.queue_name), step.limits) for step in limited_steps(settings)]
    return {
        name: (await snapshot(await _container_queue(settings, name), None, priorities), limits)
        for name, limits in queues
    }


def close() -> None:
    """Close the container's queues (tests, before ``runtime.reset()``)."""
    global _queues
    if _queues is not None and not _queues[0].is_closed():
        for queue in _queues[2].values():
            runtime.run(queue.close())
    _queues = None


def _publish(event: dict[str, Any], context: Any) -> dict[str, Any]:
    settings = runtime.settings()
    budget = context.get_remaining_time_in_millis() / 1000 - SAFETY_MARGIN_S
    snaps = runtime.run(asyncio.wait_for(_collect(settings), max(budget, 0.1)))
    at = datetime.now(UTC)
    data = [datum for name, (snap, _) in snaps.items() for datum in metric_data(snap, name, at)]
    total = sum(runnable(snap, limits) for snap, limits in snaps.values())
    data.append(runnable_datum(total, settings.queue_name, at))
    if settings.metrics_emf:
        emit_emf(settings.metrics_namespace, data)
    else:
        cloudwatch = aws.client("cloudwatch")
        for start in range(0, len(data), 500):  # PutMetricData takes at most 1,000 a call
            cloudwatch.put_metric_data(
                Namespace=settings.metrics_namespace, MetricData=data[start : start + 500]
            )
    main, _ = snaps[settings.queue_name]
    published = asdict(main) | {"queue": settings.queue_name, "runnable": total}
    published["queues"] = {name: asdict(snap) for name, (snap, _) in snaps.items()}
    logger.info("queue metrics published", extra=published)
    return published


_handle = traced(_publish)


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return _handle(event, context)
