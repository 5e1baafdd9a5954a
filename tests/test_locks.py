"""The requirements locks (scripts/lock.py): complete, hashed, in step with their .in files, and
the deployables pinned to the versions the tests run.

The offline checks here read the files only; ``test_the_check_finds_a_stale_lock`` runs the real
recompile (uv, offline from its cache when it can), as ``scripts/test.sh`` does on the repository.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK_SCRIPT = ROOT / "scripts" / "lock.py"


@cache
def lock_script() -> ModuleType:
    """scripts/lock.py as a module: its LOCKS table says which .in makes which lock."""
    spec = importlib.util.spec_from_file_location("offload_lock_script", LOCK_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


LOCKS = lock_script().LOCKS


@dataclass(frozen=True)
class Pin:
    requirement: Requirement
    hashes: tuple[str, ...]

    @property
    def version(self) -> Version:
        [spec] = self.requirement.specifier
        return Version(spec.version)


def read_lock(path: Path) -> dict[str, list[Pin]]:
    """Every entry of a lock, by canonical name (several when markers split a package)."""
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    pins: dict[str, list[Pin]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("--") else ""
        if not line:
            continue
        requirement_text, *options = line.split(" --")
        hashes = tuple(o.split("=", 1)[1] for o in options if o.startswith("hash="))
        requirement = Requirement(requirement_text.strip())
        pins.setdefault(canonicalize_name(requirement.name), []).append(Pin(requirement, hashes))
    return pins


def direct_requirements(path: Path) -> list[Requirement]:
    """The requirements an .in file names, with those of the files it includes (``-r``)."""
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-c"):
            continue
        if line.startswith("-r"):
            found += direct_requirements(path.parent / line.split(None, 1)[1])
        else:
            found.append(Requirement(line))
    return found


def stale_pins(root: Path) -> list[str]:
    """Direct requirements of an .in file that its lock does not pin at an allowed version."""
    problems = []
    for lock in LOCKS:
        pins = read_lock(root / lock.output)
        for requirement in direct_requirements(root / lock.source):
            versions = [p.version for p in pins.get(canonicalize_name(requirement.name), [])]
            if not any(requirement.specifier.contains(v, prereleases=True) for v in versions):
                problems.append(f"{lock.output}: {requirement} (locked: {versions or 'absent'})")
    return problems


def copy_locks(root: Path) -> None:
    """The .in files and their locks, at the same relative paths under ``root``."""
    for lock in LOCKS:
        for name in (lock.source, lock.output):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, root / name)


def test_every_in_file_has_its_lock_compiled_by_lock_py() -> None:
    assert lock_script().unlisted_sources(ROOT) == []
    for lock in LOCKS:
        assert (ROOT / lock.source).is_file(), lock.source
        assert (ROOT / lock.output).is_file(), f"{lock.output}: run scripts/lock.py"


@pytest.mark.parametrize("lock", LOCKS, ids=lambda lock: lock.output)
def test_every_locked_package_is_pinned_with_hashes(lock) -> None:
    pins = read_lock(ROOT / lock.output)
    assert pins
    for name, entries in pins.items():
        for pin in entries:
            assert [s.operator for s in pin.requirement.specifier] == ["=="], (name, pin)
            assert pin.hashes and all(h.startswith("sha256:") for h in pin.hashes), name


def test_every_direct_requirement_is_pinned_in_its_lock() -> None:
    assert stale_pins(ROOT) == []


def test_a_pin_changed_in_an_in_file_alone_is_found(tmp_path: Path) -> None:
    """The offline check above can fail: an .in edited without recompiling its lock."""
    copy_locks(tmp_path)
    worker_in = tmp_path / "fargate_worker" / "requirements.in"
    lines = worker_in.read_text().splitlines(keepends=True)
    worker_in.write_text(
        "".join("pillow==999.0\n" if line.startswith("pillow==") else line for line in lines)
    )
    problems = stale_pins(tmp_path)
    # The dev lock installs the worker's requirements too.
    assert [p.split(":")[0] for p in problems] == [
        "fargate_worker/requirements.txt",
        "requirements-dev.txt",
    ]
    assert all(": pillow==999.0 (locked: [<Version('" in p for p in problems), problems


def test_deployables_ship_the_runtime_versions_the_tests_run() -> None:
    """The worker image and the Lambda bundle pin the shared runtime's lock, and the dev venv
    (the tests) and the CDK app pin the deployables' versions."""
    runtime = read_lock(ROOT / "requirements-runtime.txt")
    dev = read_lock(ROOT / "requirements-dev.txt")

    def versions(pins: dict[str, list[Pin]]) -> dict[str, set[Version]]:
        return {name: {p.version for p in entries} for name, entries in pins.items()}

    for output in ("lambdas/requirements.txt", "fargate_worker/requirements.txt"):
        deployable = versions(read_lock(ROOT / output))
        for name, pinned in versions(runtime).items():
            assert deployable.get(name) == pinned, (output, name)
        for name, pinned in deployable.items():
            assert pinned <= versions(dev).get(name, set()), (output, name, "not in the dev lock")
    for name, pinned in versions(read_lock(ROOT / "requirements.txt")).items():
        assert pinned <= versions(dev).get(name, set()), ("requirements.txt", name)


@pytest.mark.slow
@pytest.mark.infra  # recompiles every lock twice: ~30 s, not for the fast tier
def test_the_check_finds_a_stale_lock(tmp_path: Path) -> None:
    """`scripts/lock.py --check` (a step of scripts/test.sh) recompiles and compares: it passes
    on the committed files and fails once an .in file changes without its lock."""
    (tmp_path / "scripts").mkdir()
    shutil.copy2(LOCK_SCRIPT, tmp_path / "scripts" / "lock.py")
    copy_locks(tmp_path)
    command = [sys.executable, str(tmp_path / "scripts" / "lock.py"), "--check"]

    fresh = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert fresh.returncode == 0, fresh.stderr

    runtime_in = tmp_path / "requirements-runtime.in"
    lines = runtime_in.read_text().splitlines(keepends=True)
    runtime_in.write_text("".join(line for line in lines if not line.startswith("filetype==")))
    stale = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert stale.returncode == 1
    assert "requirements-runtime.txt is stale against requirements-runtime.in" in stale.stderr
    assert "-filetype==" in stale.stderr
