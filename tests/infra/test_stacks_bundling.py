"""The real Lambda bundling (the other infra tests skip it): pip-installed for the Lambda
platform, offload/ and lambdas/ copied in, cached so repeat synths need no network."""

from __future__ import annotations

import subprocess
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_lambda as lambda_

from stacks import bundling
from stacks.bundling import PipLocalBundling, dependencies_hash, lambda_code, source_hash

ELF_MACHINE_X86_64 = 0x3E


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The asset directory of a real synth (CDK calls our ILocalBundling through jsii)."""
    outdir = tmp_path_factory.mktemp("bundled")
    app = cdk.App(outdir=str(outdir), builtin_cloud_formation_validation=False)
    stack = cdk.Stack(app, "Bundled")
    lambda_.Function(
        stack,
        "Fn",
        runtime=bundling.RUNTIME,
        architecture=bundling.ARCHITECTURE,
        handler="lambdas.api.handler",
        code=lambda_code(),
    )
    app.synth()
    [asset] = [p for p in outdir.glob("asset.*") if p.is_dir()]
    return asset


def test_bundle_has_the_code_and_the_dependencies(bundle: Path) -> None:
    for path in ("offload/settings.py", "offload/db/migrate.py", "lambdas/runtime.py"):
        assert (bundle / path).is_file(), path
    for package in ("bullmq", "redis", "psycopg", "psycopg_pool", "boto3", "aws_lambda_powertools"):
        assert (bundle / package / "__init__.py").is_file(), package
    for absent in ("tests", "bench", "stacks", "fargate_worker", "bin", "node_modules", ".venv"):
        assert not (bundle / absent).exists(), absent


def test_bundle_leaves_the_cli_out(bundle: Path) -> None:
    """The CLI (offload_cli/) never runs in a Lambda: a CLI-only change must not change the
    asset (nor its hash, so no function is redeployed for it)."""
    assert not (bundle / "offload_cli").exists()
    assert not (bundle / "offload" / "client").exists()
    assert not (bundle / "offload" / "__main__.py").exists()
    assert not list(bundle.glob("offload_cli*"))


def test_bundle_carries_byte_code_of_the_lambda_python(bundle: Path) -> None:
    """Lambda cannot write byte code to /var/task: without it every cold start compiles."""
    if bundling.lambda_python() is None:
        assert not list(bundle.rglob("__pycache__"))
        pytest.skip(f"no python{bundling.PYTHON_VERSION} here: the bundle has sources only")
    for module in ("botocore/__init__", "bullmq/__init__", "lambdas/api", "offload/settings"):
        package, name = module.rsplit("/", 1)
        pyc = bundle / package / "__pycache__" / f"{name}.cpython-312.pyc"
        assert pyc.is_file(), pyc
        flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
        assert flags == 0b01, f"{pyc}: not unchecked-hash byte code (flags {flags:#b})"
    assert not list(bundle.rglob("*.cpython-311.pyc"))


def test_binary_wheels_target_lambda_python_312_x86_64(bundle: Path) -> None:
    [extension] = list((bundle / "psycopg_binary").glob("_psycopg.cpython-312-x86_64-linux-gnu.so"))
    header = extension.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    assert int.from_bytes(header[18:20], "little") == ELF_MACHINE_X86_64
    [wheel] = list(bundle.glob("psycopg_binary-*.dist-info/WHEEL"))
    tags = wheel.read_text()
    assert "cp312-cp312-manylinux" in tags and "x86_64" in tags


def test_repeat_bundles_come_from_the_cache_without_pip(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_run = subprocess.run

    def no_pip(command, *args, **kwargs):
        assert "pip" not in command, "pip must not run when the dependency cache is warm"
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", no_pip)
    out = tmp_path / "again"
    PipLocalBundling().build(out)
    assert (out / "psycopg_binary").is_dir()
    assert (out / "lambdas" / "runtime.py").read_bytes() == (
        bundle / "lambdas" / "runtime.py"
    ).read_bytes()


def test_dependency_hash_follows_included_requirement_files(tmp_path: Path) -> None:
    (tmp_path / "base.txt").write_text("redis==8.1.0\n")
    (tmp_path / "sub").mkdir()
    requirements = tmp_path / "sub" / "requirements.txt"
    requirements.write_text("-r ../base.txt\nboto3==1.44.5\n")
    before = dependencies_hash(requirements)
    (tmp_path / "base.txt").write_text("redis==8.1.1\n")
    assert dependencies_hash(requirements) != before


def test_source_hash_ignores_byte_code(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    before = source_hash(tmp_path, ("pkg",))
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "a.cpython-312.pyc").write_bytes(b"junk")
    assert source_hash(tmp_path, ("pkg",)) == before
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert source_hash(tmp_path, ("pkg",)) != before
