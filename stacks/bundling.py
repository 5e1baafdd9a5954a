"""Lambda code packaging without Docker.

One asset holds the code of every function: the dependencies locked in
``lambdas/requirements.txt`` (every package pinned with its hashes, compiled by
``scripts/lock.py`` for this platform) installed for the Lambda platform (CPython 3.12,
manylinux x86_64 wheels only, ``--require-hashes``), plus the ``offload/`` and ``lambdas/``
packages. Handlers are ``lambdas.<module>.handler``.

``PipLocalBundling`` is the local bundler CDK tries first (``BundlingOptions.local``): it
pip-installs the lock once into ``.cdk-cache/lambda-deps/<hash>/`` (the hash covers the lock's
content, the target platform and Python version), then hard-links that tree into the asset
directory and copies the two packages in. Repeat synths are therefore fast and need no network;
only a change of the lock reaches the package index again. The Docker image is only the
fallback, for a machine where the local bundler cannot run.

Byte code: ``/var/task`` is read-only in Lambda, so modules shipped without byte code are
compiled from source at every cold start (boto3, botocore, Powertools, psycopg, bullmq: hundreds
of milliseconds). When an interpreter of the Lambda's Python version is on this machine
(``python3.12``, or ``OFFLOAD_LAMBDA_PYTHON``), the bundle carries byte code compiled with it, in
``unchecked-hash`` mode (valid whatever the files' timestamps, which CDK's zip does not keep).
Without one, the bundle has sources only and still works.

Nothing here imports the handlers: the asset is built from files only.

The asset hash is computed here (``AssetHashType.CUSTOM``) from the dependency hash and the
contents of ``offload/`` and ``lambdas/``, so CDK never fingerprints the whole repository.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

import jsii
from aws_cdk import AssetHashType, BundlingOptions, DockerImage, ILocalBundling
from aws_cdk import aws_lambda as lambda_

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCK = "lambdas/requirements.txt"  # compiled by scripts/lock.py from requirements.in
PACKAGES = ("offload", "lambdas")
PYTHON_VERSION = "3.12"
# The newest glibc a wheel may need: scripts/lock.py resolves the lock for
# x86_64-manylinux_2_28, which takes every manylinux wheel up to glibc 2.28; pip takes exactly
# the tags it is given (manylinux2014 adds manylinux2010 and manylinux1), so it gets them all.
MANYLINUX_GLIBC_MAX = 28
PLATFORMS = (
    "manylinux2014_x86_64",
    *(f"manylinux_2_{minor}_x86_64" for minor in range(5, MANYLINUX_GLIBC_MAX + 1)),
)
RUNTIME = lambda_.Runtime.PYTHON_3_12
ARCHITECTURE = lambda_.Architecture.X86_64
DEFAULT_CACHE_DIR = REPO_ROOT / ".cdk-cache" / "lambda-deps"
# Installed by some wheels but never imported by a handler: left out of the bundle.
_PRUNE_TOP_LEVEL = ("bin", "node_modules")
_SKIP_NAMES = ("__pycache__",)
_SKIP_SUFFIXES = (".pyc", ".pyo")


@cache
def lambda_python() -> str | None:
    """An interpreter of the Lambda runtime's Python version (to compile byte code), if any."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [
        os.environ.get("OFFLOAD_LAMBDA_PYTHON"),
        f"python{PYTHON_VERSION}",  # on PATH (Ubuntu 24.04, deadsnakes, an active pyenv)
        f"/usr/bin/python{PYTHON_VERSION}",
        *sorted(map(str, pyenv_root.glob(f"versions/{PYTHON_VERSION}.*/bin/python3"))),
    ]
    for candidate in candidates:
        path = candidate and shutil.which(candidate)
        if not path:
            continue
        probe = subprocess.run(
            [path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == PYTHON_VERSION:
            return path
    return None


def compile_tree(*roots: Path) -> None:
    """Byte code for every module under ``roots``, with the Lambda's Python version."""
    python = lambda_python()
    if python is None:
        return
    result = subprocess.run(
        [python, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash"]
        + [str(root) for root in roots],
        capture_output=True,
        text=True,
        check=False,
    )
    # compileall exits 1 when a file does not compile (a test fixture or py2 leftover inside
    # some package); the rest is compiled and that file simply stays source-only.
    if result.returncode not in (0, 1):
        raise RuntimeError(f"compileall failed:\n{result.stderr[-4000:]}")


def dependencies_hash(lock: Path) -> str:
    """The cache key of an installed lock: its content and how it is installed."""
    digest = hashlib.sha256()
    compiled = lambda_python() is not None
    digest.update(
        f"python={PYTHON_VERSION};platforms={','.join(PLATFORMS)};compiled={compiled};v3\n".encode()
    )
    digest.update(lock.read_bytes())
    return digest.hexdigest()[:32]


def _package_files(root: Path, packages: Iterable[str]) -> Iterator[Path]:
    for package in packages:
        for dirpath, dirnames, filenames in os.walk(root / package):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_NAMES)
            for filename in sorted(filenames):
                if not filename.endswith(_SKIP_SUFFIXES):
                    yield Path(dirpath) / filename


def source_hash(root: Path = REPO_ROOT, packages: Iterable[str] = PACKAGES) -> str:
    """Hash of the packaged sources (paths and contents), ignoring byte code."""
    digest = hashlib.sha256()
    for path in _package_files(root, packages):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link ``src`` into ``dst`` (copy when the two are on different file systems)."""

    def link(source: str, target: str) -> None:
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)

    shutil.copytree(src, dst, copy_function=link, dirs_exist_ok=True)


@jsii.implements(ILocalBundling)
class PipLocalBundling:
    """Builds the Lambda asset on this machine, with pip and a local dependency cache."""

    def __init__(
        self,
        *,
        repo_root: Path = REPO_ROOT,
        lock: str = LOCK,
        packages: tuple[str, ...] = PACKAGES,
        cache_dir: Path | None = None,
    ) -> None:
        self.repo_root = repo_root
        self.lock = repo_root / lock
        self.packages = packages
        env_cache = os.environ.get("OFFLOAD_CDK_CACHE_DIR")
        self.cache_dir = cache_dir or (Path(env_cache) if env_cache else DEFAULT_CACHE_DIR)

    def dependencies_dir(self) -> Path:
        """The cached dependency tree for the current lock, installed when missing."""
        target = self.cache_dir / dependencies_hash(self.lock)
        if target.is_dir():
            return target
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=self.cache_dir))
        try:
            command = [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-compile",
                "--only-binary=:all:",
                "--require-hashes",
                "--implementation",
                "cp",
                "--python-version",
                PYTHON_VERSION,
                *(arg for platform in PLATFORMS for arg in ("--platform", platform)),
                "--target",
                str(staging),
                "-r",
                str(self.lock),
            ]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise RuntimeError(
                    f"pip could not install {self.lock.name} for the Lambda (cp{PYTHON_VERSION},"
                    f" manylinux_2_{MANYLINUX_GLIBC_MAX} x86_64):\n{result.stderr[-4000:]}"
                )
            for name in _PRUNE_TOP_LEVEL:
                shutil.rmtree(staging / name, ignore_errors=True)
            compile_tree(staging)
            try:
                staging.rename(target)
            except OSError:  # another synth installed the same tree meanwhile
                if not target.is_dir():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def build(self, output_dir: Path) -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        _link_tree(self.dependencies_dir(), output_dir)
        for path in _package_files(self.repo_root, self.packages):
            target = output_dir / path.relative_to(self.repo_root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        compile_tree(*(output_dir / package for package in self.packages))

    def try_bundle(self, output_dir: str, options: BundlingOptions) -> bool:
        self.build(Path(output_dir))
        return True


def docker_bundling_command() -> list[str]:
    """The fallback: the same install and copy inside the SAM build image."""
    return [
        "bash",
        "-c",
        "pip install --no-compile --no-cache-dir --only-binary=:all: --require-hashes"
        " -r lambdas/requirements.txt -t /asset-output"
        " && rm -rf /asset-output/bin /asset-output/node_modules"
        " && cp -r offload lambdas /asset-output/"
        " && find /asset-output -name __pycache__ -prune -exec rm -rf {} +"
        " && (python -m compileall -q -j 0 --invalidation-mode unchecked-hash /asset-output"
        " || true)",
    ]


def lambda_code(*, skip_bundling: bool = False) -> lambda_.Code:
    """The code asset every function uses (``lambdas.<module>.handler``).

    ``skip_bundling`` (context ``offload:skipBundling``, for template tests only) stages the
    bare ``lambdas/`` directory instead: same handlers and template, no dependencies.
    """
    if skip_bundling:
        return lambda_.Code.from_asset(
            str(REPO_ROOT / "lambdas"),
            exclude=["__pycache__", "*.pyc", "requirements.txt", "requirements.in"],
        )
    bundler = PipLocalBundling()
    asset_hash = hashlib.sha256(
        (dependencies_hash(bundler.lock) + source_hash(REPO_ROOT, PACKAGES)).encode()
    ).hexdigest()
    return lambda_.Code.from_asset(
        str(REPO_ROOT),
        asset_hash_type=AssetHashType.CUSTOM,
        asset_hash=asset_hash,
        bundling=BundlingOptions(
            image=DockerImage.from_registry(RUNTIME.bundling_image.image),
            command=docker_bundling_command(),
            local=bundler,
        ),
    )
