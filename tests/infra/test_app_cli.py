"""``python app.py`` and ``scripts/cdk.sh`` on the command line: each environment synthesises
into a folder of its own (``cdk.out/<env>``), and a bad environment is one line of error."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import app as offload_app
from stacks.config import DEFAULT_ENV, ENV_KEYS, env_name
from tests.infra.conftest import ROOT, file_context


def run_app(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python app.py`` as on a machine with no AWS credentials and no CDK CLI around it."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CDK_"))}
    return subprocess.run(
        [sys.executable, str(ROOT / "app.py"), *args],
        cwd=ROOT,
        env=environ | env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_python_app_py_writes_each_environment_into_its_own_folder_offline() -> None:
    """`python app.py -c env=prod` used to write beside dev's templates in cdk.out, so the
    documented `cfn-lint cdk.out/*.template.json` checked both environments at once. It reads
    cdk.json itself and needs no credentials (bundling skipped to stay fast)."""
    for env in ("dev", "prod"):
        started = time.time() - 1
        done = run_app("-c", f"env={env}", "-c", "offload:skipBundling=true")
        assert done.returncode == 0, done.stderr[-2000:]
        written = list((ROOT / "cdk.out" / env).glob(f"Offload-{env}-*.template.json"))
        assert len(written) == 9
        assert all(path.stat().st_mtime >= started for path in written)
        beside = ROOT / "cdk.out" / f"Offload-{env}-Api.template.json"
        assert not beside.exists() or beside.stat().st_mtime < started


def test_each_environment_has_its_default_folder() -> None:
    for name in ("dev", "prod"):
        context = offload_app.standalone_context([f"env={name}"])
        assert offload_app.default_outdir(context) == ROOT / "cdk.out" / name
    default = offload_app.standalone_context([])
    assert offload_app.default_outdir(default) == ROOT / "cdk.out" / env_name(default.get)


def test_an_unknown_environment_is_one_line_without_a_traceback(tmp_path) -> None:
    done = run_app("-c", "env=staging", CDK_OUTDIR=str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "app.py: error: unknown environment 'staging': cdk.json defines ['dev', 'prod']"
    )
    assert not any(tmp_path.iterdir())


def cdk_sh_outdir(*args: str) -> str:
    """The folder scripts/cdk.sh gives the CDK CLI for this command line (scripts/lib.sh)."""
    done = subprocess.run(
        ["bash", "-c", 'source scripts/lib.sh && cdk_outdir "$@"', "cdk_outdir", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


@pytest.mark.parametrize(
    ("args", "folder"),
    [
        (["synth", "-c", "env=prod", "--quiet"], "cdk.out/prod"),
        (["deploy", "--all", "--context", "env=prod"], "cdk.out/prod"),
        (["synth", "--context=env=prod"], "cdk.out/prod"),
        (["diff", "-c", "offload:env=prod"], "cdk.out/prod"),
        (["synth", "-c", "offload:env=prod", "-c", "env=dev"], "cdk.out/dev"),
        (["synth", "-c", "env=prod", "-o", "elsewhere"], ""),
        (["synth", "--output=elsewhere"], ""),
    ],
)
def test_cdk_sh_gives_the_cli_the_environment_folder(args: list[str], folder: str) -> None:
    assert cdk_sh_outdir(*args) == folder


def test_cdk_sh_and_the_app_agree_on_the_environment() -> None:
    """The shell picks the environment as stacks/config.py does: the same keys in the same
    order, and without one cdk.json's default."""
    for key in ENV_KEYS:
        assert cdk_sh_outdir("synth", "-c", f"{key}=prod") == "cdk.out/prod"
    assert cdk_sh_outdir("synth") == f"cdk.out/{env_name(file_context().get)}"
    assert env_name({}.get) == DEFAULT_ENV
