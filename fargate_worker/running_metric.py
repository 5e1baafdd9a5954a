"""The running-task count the workers' autoscaling divides the backlog by, published by the
tasks themselves: ``RunningTasks`` = 1, once a minute, from every running task.

ECS publishes a service's running task count only with Container Insights (billed per metric,
and switched per environment: ``workers.containerInsights``), so the scaling policy cannot
depend on it. Each task writes one EMF line a minute instead (stdout -> the awslogs driver ->
CloudWatch extracts the metric: no API call, no credentials, no VPC endpoint), stamped with the
start of its minute, so a one-minute ``Sum`` is the number of tasks alive in that minute. A
task that stops stops counting within the minute; one that starts counts from its first.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from offload.metrics import MetricsEmitter

RUNNING_TASKS = "RunningTasks"  # stacks/metrics.py reads the same name
PERIOD_S = 60.0


async def report_running(
    emitter: MetricsEmitter,
    period_s: float = PERIOD_S,
    clock: Callable[[], float] = time.time,
) -> None:
    """Forever: one ``RunningTasks`` datapoint per period, stamped at the period's start (a
    task that reports late in a minute still counts in that minute, and never twice)."""
    while True:
        now = clock()
        start = math.floor(now / period_s) * period_s
        emitter.emit({RUNNING_TASKS: (1, "Count")}, timestamp_ms=int(start * 1000))
        await asyncio.sleep(max(start + period_s - clock(), 0.0))
