"""Every entry point answers ``--help`` with its usage and exit 0, and starts nothing: no
connection to Redis, PostgreSQL, AWS or the API, no synth. (``python -m fargate_worker --help``
used to start a worker on the default Redis and take jobs.)

The entry points are found, not listed, so a new one is covered the day it is added: every
package's ``__main__.py`` and every module of the packages with a ``__main__`` guard (run with
``-m``), and the scripts with one in ``bench/``, ``scripts/`` and the repository root. Each runs
with every server address pointing at a test-owned listener that records any connection.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.listener import ConnectionRecorder

ROOT = Path(__file__).resolve().parent.parent
MAIN_GUARD = re.compile(r"""^if __name__ == ["']__main__["']:""", re.MULTILINE)
NOT_ENTRY_POINTS = {"tests"}  # test helpers run as children of tests, not by people
# Variables naming a real server or credentials that a child must not inherit.
INHERITED_SERVERS = (
    "DATABASE_HOST",
    "DATABASE_PROXY_HOST",
    "DATABASE_SECRET_ARN",
    "REDIS_AUTH_SECRET_ARN",
    "CDK_CONTEXT_JSON",
    "OFFLOAD_TOKEN",
)


def _has_main_guard(path: Path) -> bool:
    return bool(MAIN_GUARD.search(path.read_text(encoding="utf-8")))


def entry_points() -> list[tuple[str, ...]]:
    """The command line of each entry point, after ``python``."""
    found: list[tuple[str, ...]] = []
    packages = sorted(p.parent for p in ROOT.glob("*/__init__.py"))
    for package in packages:
        if package.name in NOT_ENTRY_POINTS:
            continue
        for path in sorted(package.rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            if path.name == "__main__.py":
                found.append(("-m", module.removesuffix(".__main__")))
            elif _has_main_guard(path):
                found.append(("-m", module))
    for folder in (ROOT / "bench", ROOT / "scripts", ROOT):
        if folder in packages:
            continue
        for path in sorted(folder.glob("*.py")):
            if _has_main_guard(path):
                found.append((str(path.relative_to(ROOT)),))
    return found


ENTRY_POINTS = entry_points()


def test_the_known_entry_points_are_found() -> None:
    """The discovery itself: it finds the ones this test was written for."""
    for known in (
        ("-m", "fargate_worker"),
        ("-m", "fargate_worker.health"),
        ("-m", "offload_local"),
        ("-m", "offload.db.migrate"),
        ("app.py",),
        ("bench/queue_throughput.py",),
        ("scripts/lock.py",),
    ):
        assert known in ENTRY_POINTS, known
    # The command-line uploader, under the package name it has now or its own (offload_cli).
    assert ("-m", "offload") in ENTRY_POINTS or ("-m", "offload_cli") in ENTRY_POINTS


@dataclass(frozen=True)
class Run:
    returncode: int
    out: str
    err: str
    connections: list[tuple[str, int]]


def run_isolated(command: list[str], tmp_path: Path, program: str = sys.executable) -> Run:
    """``python COMMAND`` (or ``PROGRAM COMMAND``) with every server it could reach pointing at
    a recording listener, run from ``tmp_path`` (nothing lands in the repository)."""
    with ConnectionRecorder() as servers:
        address = f"127.0.0.1:{servers.port}"
        env = {k: v for k, v in os.environ.items() if k not in INHERITED_SERVERS}
        env.update(
            REDIS_URL=f"redis://{address}/0",
            DATABASE_URL=f"postgresql://postgres@{address}/test",
            AWS_ENDPOINT_URL=f"http://{address}",
            S3_ENDPOINT_URL=f"http://{address}",
            SECRETS_ENDPOINT_URL=f"http://{address}",
            ECS_AGENT_URI=f"http://{address}/v3/task",
            OFFLOAD_API_URL=f"http://{address}/api",
            OFFLOAD_SITE=f"http://{address}/",
            OFFLOAD_COGNITO_ENDPOINT=f"http://{address}/",
            OFFLOAD_HEALTH_FILE=str(tmp_path / "health"),
            OFFLOAD_STATE_DIR=str(tmp_path / "state"),
            CDK_OUTDIR=str(tmp_path / "cdk.out"),
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            PYTHONPATH=str(ROOT),
        )
        # A new session: an entry point that does start something (a worker and its sandbox
        # processes) is stopped whole when it does not exit.
        child = subprocess.Popen(
            [program, *command],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = child.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            out, err = child.communicate()
            pytest.fail(f"{' '.join(command)} did not exit:\n{err[-2000:]}")
        return Run(child.returncode, out, err, servers.connections())


@pytest.mark.parametrize("argv", ENTRY_POINTS, ids=" ".join)
def test_help_prints_usage_and_connects_nowhere(argv: tuple[str, ...], tmp_path: Path) -> None:
    # Scripts by their path: they are run from elsewhere.
    command = list(argv) if argv[0] == "-m" else [str(ROOT / argv[0])]
    run = run_isolated([*command, "--help"], tmp_path)
    assert run.connections == [], f"{' '.join(argv)} --help connected to a server"
    assert run.returncode == 0, run.err[-2000:]
    assert run.out.lstrip().startswith("usage:"), run.out[:500]
    assert not (tmp_path / "cdk.out").exists(), "--help synthesised the CDK app"


SHELL_SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.sh") if p.name != "lib.sh")


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_each_shell_script_answers_help_before_doing_anything(script: str, tmp_path: Path) -> None:
    """``bash scripts/setup.sh --help`` used to be an unknown option, and ``test.sh --help`` ran
    the setup before pytest printed its own help."""
    venv_before = (ROOT / ".venv").stat().st_mtime
    run = run_isolated([str(ROOT / "scripts" / script), "--help"], tmp_path, program="bash")
    assert run.returncode == 0, run.err[-2000:]
    assert run.out.startswith(f"usage: bash scripts/{script}"), run.out[:500]
    assert run.connections == []
    assert "setup:" not in run.out + run.err  # setup did not run
    assert (ROOT / ".venv").stat().st_mtime == venv_before


ENVIRONMENT_CONFIGURED = ("fargate_worker", "fargate_worker.health", "offload.db.migrate")


@pytest.mark.parametrize("module", ENVIRONMENT_CONFIGURED)
def test_an_environment_configured_entry_point_refuses_arguments(
    module: str, tmp_path: Path
) -> None:
    """Their configuration is the environment: an argument is a usage error (exit 2), never
    ignored by a worker or a migration that then starts anyway."""
    run = run_isolated(["-m", module, "--concurrency", "4"], tmp_path)
    assert run.connections == []
    assert run.returncode == 2, run.err[-2000:]
    assert "unrecognized arguments: --concurrency 4" in run.err
