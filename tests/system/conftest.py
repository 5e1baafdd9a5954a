"""System tests: the whole local stack (``python -m offload_local``) in a process tree of its own,
on a Redis and a PostgreSQL of its own, with faults injected from outside (docs/reliability.md).

The short versions run with the suite (CI) on shortened worker and reconciler timings; the full
ones (``--system-long`` or ``OFFLOAD_SYSTEM_LONG=1``) with the shipped settings and full sizes.
Each test reports its figures in the "system figures" section at the end of the run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.system_stack import FIGURES_PROPERTY, SystemConfig, SystemRun


@pytest.fixture
def long_run(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--system-long"))


@pytest.fixture
def system(tmp_path) -> Iterator[Callable[[SystemConfig], SystemRun]]:
    """Starts a stack on servers of its own; everything it started is stopped afterwards, and a
    process that had to be killed by force fails the test (a worker that does not stop, a
    sandbox child that outlived its worker)."""
    runs: list[SystemRun] = []

    def start(config: SystemConfig) -> SystemRun:
        run = SystemRun(tmp_path / f"run-{len(runs) + 1}", config)
        runs.append(run)
        run.start()
        return run

    yield start
    forced: list[str] = []
    for run in runs:
        forced += run.close()
    assert not forced, "processes left behind, killed by force:\n" + "\n".join(forced)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[[dict[str, Any]], None]:
    """Records the test's figures for the summary (and prints them with ``-s``). They travel
    in the test's report (``user_properties``): under pytest-xdist the summary is written by
    the controller (tests/conftest.py), which sees the workers' reports, not their memory."""

    def record(values: dict[str, Any]) -> None:
        text = json.dumps(values, default=str)
        request.node.user_properties.append((FIGURES_PROPERTY, text))
        print(f"FIGURES {request.node.name} {text}")

    return record
