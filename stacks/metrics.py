"""Names of the custom CloudWatch metrics the runtime publishes (namespace ``Offload``,
dimension ``Queue`` = the bullmq queue name), in one place for the scaling policy, the
dashboard and the alarms.

- Published every minute by the queue-metrics Lambda (``lambdas.queue_metrics.handler``), for
  the main queue and each step queue (``<queue>-<step>``): ``Waiting``, ``Active``,
  ``Delayed``, ``Failed`` (job counts) and ``OldestWaitingAge`` (seconds the oldest waiting
  job has waited); and, for the main queue's name only, ``Runnable``: the waiting jobs of all
  of them that workers could start now (a limited step's only up to its limits), which the
  workers' autoscaling reads.
- Published by the workers as EMF (``offload/metrics.py``): ``JobsCompleted``, ``JobsFailed``
  (counts) and ``JobDuration`` (milliseconds); and ``RunningTasks``, 1 a minute from every
  running task (``fargate_worker/running_metric.py``): its one-minute ``Sum`` is the running
  task count the autoscaling divides the backlog by, with or without Container Insights.
- Published by the Lambdas as EMF (Powertools, extra dimension ``service``), e.g. the enqueue
  function's ``MessagesMalformed`` (docs/lambdas.md).
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch

NAMESPACE = "Offload"
QUEUE_DIMENSION = "Queue"

WAITING = "Waiting"
RUNNABLE = "Runnable"
ACTIVE = "Active"
DELAYED = "Delayed"
FAILED = "Failed"
OLDEST_WAITING_AGE = "OldestWaitingAge"
JOBS_COMPLETED = "JobsCompleted"
JOBS_FAILED = "JobsFailed"
JOB_DURATION = "JobDuration"
RUNNING_TASKS = "RunningTasks"

ONE_MINUTE = Duration.minutes(1)


def queue_metric(
    name: str,
    queue_name: str,
    *,
    statistic: str = "Maximum",
    period: Duration = ONE_MINUTE,
    label: str | None = None,
) -> cloudwatch.Metric:
    return cloudwatch.Metric(
        namespace=NAMESPACE,
        metric_name=name,
        dimensions_map={QUEUE_DIMENSION: queue_name},
        statistic=statistic,
        period=period,
        label=label,
    )


def running_tasks(queue_name: str, *, label: str | None = None) -> cloudwatch.Metric:
    """The workers' own count of running tasks (one datapoint a minute from each)."""
    return queue_metric(RUNNING_TASKS, queue_name, statistic="Sum", label=label)
