"""The real Lambda bundling (the other infra tests skip it): the hashed lock pip-installed for
the Lambda platform, offload/ and lambdas/ copied in, cached so repeat synths need no network."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_lambda as lambda_
from packaging.utils import canonicalize_name

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
    for path in (
        "offload/settings.py",
        "offload/db/migrate.py",
        "offload/db/ca/aws-database-roots.pem",  # verify-full to RDS Proxy
        "lambdas/runtime.py",
    ):
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


def test_bundle_holds_exactly_the_locked_versions(bundle: Path) -> None:
    """Every package of lambdas/requirements.txt at its pinned version, and nothing else."""
    lock = (bundling.REPO_ROOT / bundling.LOCK).read_text()
    locked = {
        canonicalize_name(name): version
        for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", lock, re.MULTILINE)
    }
    installed = {
        canonicalize_name(path.name.removesuffix(".dist-info").rsplit("-", 1)[0]): (
            path.name.removesuffix(".dist-info").rsplit("-", 1)[1]
        )
        for path in bundle.glob("*.dist-info")
    }
    assert installed == locked


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


def test_dependency_cache_is_keyed_by_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.txt"
    lock.write_text("redis==8.1.0 --hash=sha256:aa\n")
    before = dependencies_hash(lock)
    lock.write_text("redis==8.1.0 --hash=sha256:bb\n")
    assert dependencies_hash(lock) != before


def test_the_bundle_installs_only_hashed_requirements(tmp_path: Path) -> None:
    """pip runs with --require-hashes: a requirement without its hashes is refused, not fetched."""
    (tmp_path / "requirements.txt").write_text("six==1.17.0\n")
    bundler = PipLocalBundling(
        repo_root=tmp_path, lock="requirements.txt", cache_dir=tmp_path / "cache"
    )
    with pytest.raises(RuntimeError, match="Hashes are required in --require-hashes mode"):
        bundler.dependencies_dir()
    assert not any(p for p in (tmp_path / "cache").iterdir() if p.is_dir())


def test_the_lock_is_compiled_for_the_platform_the_bundle_installs() -> None:
    """scripts/lock.py writes its target into the lock's header; pip installs for the same."""
    header = (bundling.REPO_ROOT / bundling.LOCK).read_text().splitlines()[:2]
    assert header[1].endswith(
        f"(CPython {bundling.PYTHON_VERSION}, "
        f"x86_64-manylinux_2_{bundling.MANYLINUX_GLIBC_MAX}, wheels only)"
    ), header
    assert bundling.PLATFORMS[0] == "manylinux2014_x86_64"
    assert bundling.PLATFORMS[-1] == f"manylinux_2_{bundling.MANYLINUX_GLIBC_MAX}_x86_64"


def test_source_hash_ignores_byte_code(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    before = source_hash(tmp_path, ("pkg",))
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "a.cpython-312.pyc").write_bytes(b"junk")
    assert source_hash(tmp_path, ("pkg",)) == before
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert source_hash(tmp_path, ("pkg",)) != before
