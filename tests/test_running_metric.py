"""The workers' own running-task count (fargate_worker/running_metric.py): one EMF datapoint
per period from each task, stamped at the period's start, so a period's Sum counts tasks."""

from __future__ import annotations

import asyncio
import io
import itertools
import json

from fargate_worker.running_metric import RUNNING_TASKS, report_running
from offload.metrics import MetricsEmitter


def test_one_datapoint_a_period_stamped_at_its_start() -> None:
    stream = io.StringIO()
    emitter = MetricsEmitter("Offload", {"Queue": "uploads"}, stream=stream)
    period = 0.2

    async def run_for(seconds: float) -> None:
        task = asyncio.ensure_future(report_running(emitter, period_s=period))
        await asyncio.sleep(seconds)
        task.cancel()

    asyncio.run(run_for(0.9))
    documents = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert 4 <= len(documents) <= 6
    stamps = [doc["_aws"]["Timestamp"] for doc in documents]
    assert all(stamp % int(period * 1000) == 0 for stamp in stamps)
    # one per period, none twice, none skipped
    assert [b - a for a, b in itertools.pairwise(stamps)] == [200] * (len(stamps) - 1)
    for doc in documents:
        assert doc[RUNNING_TASKS] == 1 and doc["Queue"] == "uploads"
        [directive] = doc["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "Offload"
        assert directive["Metrics"] == [{"Name": "RunningTasks", "Unit": "Count"}]
        assert directive["Dimensions"] == [["Queue"]]


def test_a_late_clock_still_counts_in_its_own_period() -> None:
    """A task that reports 59.9 s into a minute counts in that minute, and its next report
    (0.1 s later) in the next one: never two in one minute, never none."""
    stream = io.StringIO()
    emitter = MetricsEmitter("Offload", {"Queue": "uploads"}, stream=stream)
    times = iter([119.9, 119.95, 120.05, 120.1])

    async def two_reports() -> None:
        clock = lambda: next(times)  # noqa: E731
        task = asyncio.ensure_future(report_running(emitter, period_s=60, clock=clock))
        await asyncio.sleep(0.2)  # the first sleep is max(120 - 119.95, 0) = 0.05 s
        task.cancel()

    asyncio.run(two_reports())
    stamps = [json.loads(line)["_aws"]["Timestamp"] for line in stream.getvalue().splitlines()]
    assert stamps[:2] == [60_000, 120_000]
