"""The tiers and the parallel run (tests/support/tiers.py, scripts/test.sh): every test has one
tier, and pytest-xdist keeps an xdist group on one worker, so an expensive session fixture (the
local stack, the synthesised CDK apps) is built once per run. pytest 9.2 with xdist 3.8 drops
the groups without a word (pytest-xdist issue #1386): this catches that on an upgrade."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import tiers

ROOT = Path(__file__).resolve().parent.parent

GROUPED_TESTS = """
import os
import pytest

@pytest.mark.xdist_group("together")
@pytest.mark.parametrize("n", range(6))
def test_grouped(n):
    print("WORKER", os.environ["PYTEST_XDIST_WORKER"])

@pytest.mark.parametrize("n", range(6))
def test_free(n):
    pass
"""


def test_an_xdist_group_runs_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "test_grouped.py").write_text(GROUPED_TESTS)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "3", "--dist", "loadgroup", "-v", "-p",
         "no:cacheprovider", "-o", "addopts=", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    grouped = [
        line for line in done.stdout.splitlines() if "PASSED test_grouped.py::test_grouped[" in line
    ]
    assert len(grouped) == 6, done.stdout
    assert all("@together" in line for line in grouped), grouped
    workers = {line.split("]")[0] for line in grouped}
    assert len(workers) == 1, grouped


def test_every_collected_test_has_exactly_one_tier(request: pytest.FixtureRequest) -> None:
    for item in request.session.items:
        marked = [name for name in tiers.TIERS if item.get_closest_marker(name) is not None]
        assert len(marked) == 1, (item.nodeid, marked)


def test_tests_that_share_the_local_stack_or_the_cdk_apps_share_a_group(
    request: pytest.FixtureRequest,
) -> None:
    for item in request.session.items:
        fixtures = set(getattr(item, "fixturenames", ()))
        for fixture, group in tiers.SHARED_SESSION_GROUPS.items():
            if fixture in fixtures:
                marks = {m.args[0] for m in item.iter_markers("xdist_group")}
                assert marks == {group}, (item.nodeid, marks)
