#!/usr/bin/env python3
"""Compile every requirements lock from its ``.in`` file, with hashes, for the platform it runs on.

A ``.in`` file names the direct dependencies (pinned on purpose: an upgrade is a reviewed edit);
its lock beside it (same name, ``.txt``) pins the whole dependency set with the sha256 of every
file, and the installs use ``--require-hashes``. The locks are compiled in this order, since
the later ones take the earlier ones' versions as constraints (``-c`` lines in their ``.in``;
for the CDK app's, ``Lock.constraints``):

1. ``requirements-runtime.txt``: the ``offload/`` package's runtime, for CPython 3.12 manylinux
   x86_64, wheels only (the Lambda runtime and the worker image);
2. ``lambdas/requirements.txt`` (the Lambda bundle) and ``fargate_worker/requirements.txt`` (the
   worker image): same platform, the runtime's versions;
3. ``requirements-dev.txt``: the dev venv (tests and tools), for any CPython >= 3.11 on any
   platform (a universal lock: markers say which line applies where), with the versions of
   the three locks above, so the tests run what ships;
4. ``requirements.txt``: the CDK app, with the dev lock's versions (synth runs from the dev
   venv, so the CDK app's lock is what the tests ran);
5. ``requirements-checkov.txt``: the template scanner checkov in a venv of its own
   (``.venv-checkov``), for any CPython >= 3.11 like the dev lock but constrained by no other
   lock: its pins clash with the dev venv's, and it runs as a separate program.

The resolver is uv (pinned in requirements-dev.in): it resolves for a target platform and
Python version other than this machine's; pip-compile can only resolve for the interpreter it
runs under. ``--check`` recompiles into a temporary copy (offline from uv's cache when it can)
and fails on any difference. docs/dependencies.md has the workflow.
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Where `requirements*.in` files are never looked for (tools' and caches' own trees).
_SKIP_DIRS = {".git", "node_modules", ".cdk-cache", "cdk.out", "__pycache__"}

_DEPLOY = (
    "CPython 3.12, x86_64-manylinux_2_28, wheels only",
    # manylinux_2_28 accepts every wheel for glibc <= 2.28 (manylinux2014 included): what
    # stacks/bundling.py lets pip install for the Lambda, and what the worker image runs.
    ("--python-version", "3.12", "--python-platform", "x86_64-manylinux_2_28"),
    ("--only-binary", ":all:"),
)
_DEV = (
    "any CPython >= 3.11, any platform",
    ("--universal", "--python-version", "3.11"),
    (),
)


@dataclass(frozen=True)
class Lock:
    source: str  # the .in file, relative to the repository root
    target: tuple[str, tuple[str, ...], tuple[str, ...]]
    # Locks whose versions this one must keep, given on the command line: a `-c` line in the
    # .in would also constrain every lock that includes that .in (requirements.in is in dev's).
    constraints: tuple[str, ...] = ()

    @property
    def output(self) -> str:
        return self.source.removesuffix(".in") + ".txt"

    def command(self, uv: str, extra: list[str]) -> list[str]:
        description, platform_args, build_args = self.target
        return [
            uv,
            "pip",
            "compile",
            "--quiet",
            "--no-config",  # only what is written here decides the result
            "--generate-hashes",
            "--custom-compile-command",
            f"scripts/lock.py ({description})",
            *platform_args,
            *build_args,
            *extra,
            *(arg for path in self.constraints for arg in ("-c", path)),
            self.source,
            "-o",
            self.output,
        ]


LOCKS = (
    Lock("requirements-runtime.in", _DEPLOY),
    Lock("lambdas/requirements.in", _DEPLOY),
    Lock("fargate_worker/requirements.in", _DEPLOY),
    Lock("requirements-dev.in", _DEV),
    Lock("requirements.in", _DEV, constraints=("requirements-dev.txt",)),
    Lock("requirements-checkov.in", _DEV),
)


def find_uv() -> str:
    """The venv's uv (the pinned one) first: another version may format the locks differently."""
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file():
        return str(beside)
    found = shutil.which("uv")
    if found is None:
        sys.exit("lock.py: uv not found: run scripts/setup.sh (requirements-dev.txt installs it)")
    return found


def unlisted_sources(root: Path) -> list[str]:
    """``requirements*.in`` files that no entry of LOCKS compiles (they would go stale)."""
    listed = {lock.source for lock in LOCKS}
    found = []
    for path in root.rglob("requirements*.in"):
        relative = path.relative_to(root)
        if any(part in _SKIP_DIRS or part.startswith(".venv") for part in relative.parts):
            continue
        if relative.as_posix() not in listed:
            found.append(relative.as_posix())
    return sorted(found)


def compile_all(root: Path, uv: str, extra: list[str], *, offline_first: bool) -> list[str]:
    """Compile every lock in ``root``, in order; returns the failures' messages."""
    failures = []
    for lock in LOCKS:
        attempts = [["--offline"], []] if offline_first else [[]]
        for attempt in attempts:
            result = subprocess.run(
                lock.command(uv, attempt + extra),
                cwd=root,
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode == 0:
                break
        else:
            failures.append(f"{lock.output}: uv pip compile failed:\n{result.stderr.strip()}")
    return failures


def _pin_diff(current: str, fresh: str, name: str) -> str:
    """What changed, without the hash lines (a changed hash shows as its package's line)."""

    def pins(text: str) -> list[str]:
        return [line for line in text.splitlines(keepends=True) if "--hash=" not in line]

    diff = "".join(difflib.unified_diff(pins(current), pins(fresh), name, f"{name} (fresh)"))
    return diff[:4000] or "(only hashes differ)\n"


def check(root: Path, uv: str) -> int:
    """Recompile into a temporary copy of the sources and locks; 1 when any lock differs."""
    with tempfile.TemporaryDirectory(prefix="offload-locks-") as scratch:
        copy = Path(scratch)
        for lock in LOCKS:
            for name in (lock.source, lock.output):
                if (root / name).is_file():
                    (copy / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(root / name, copy / name)
        problems = compile_all(copy, uv, [], offline_first=True)
        for lock in LOCKS:
            ours = root / lock.output
            if not ours.is_file():
                problems.append(f"{lock.output} is missing")
                continue
            fresh = (copy / lock.output).read_text(encoding="utf-8")
            current = ours.read_text(encoding="utf-8")
            if fresh != current:
                problems.append(
                    f"{lock.output} is stale against {lock.source}:\n"
                    + _pin_diff(current, fresh, lock.output)
                )
    for path in unlisted_sources(root):
        problems.append(f"{path} is not compiled by scripts/lock.py (add it to LOCKS)")
    for problem in problems:
        print(f"lock: {problem}", file=sys.stderr)
    if problems:
        print("lock: run `.venv/bin/python scripts/lock.py` and commit the locks", file=sys.stderr)
        return 1
    print(f"lock: {len(LOCKS)} locks up to date")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/lock.py",
        description="Compile the requirements locks (*.txt) from their *.in files, with hashes.",
        epilog="After editing a .in file: run this, then commit the .in and the locks together.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when a lock is stale against its .in file",
    )
    mode.add_argument(
        "--upgrade",
        action="store_true",
        help="move every unpinned (transitive) dependency to its newest allowed version",
    )
    mode.add_argument(
        "--upgrade-package",
        action="append",
        default=[],
        metavar="NAME",
        help="move NAME (a transitive dependency) to its newest allowed version; repeatable",
    )
    args = parser.parse_args(argv)
    uv = find_uv()
    if args.check:
        return check(ROOT, uv)
    extra = ["--upgrade"] if args.upgrade else []
    for name in args.upgrade_package:
        extra += ["--upgrade-package", name]
    failures = compile_all(ROOT, uv, extra, offline_first=False)
    for failure in failures:
        print(f"lock: {failure}", file=sys.stderr)
    for path in unlisted_sources(ROOT):
        print(f"lock: warning: {path} is not compiled (add it to LOCKS)", file=sys.stderr)
    if not failures:
        print("lock: " + ", ".join(lock.output for lock in LOCKS))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
