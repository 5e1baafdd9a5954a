"""Cold-start cost of the Lambda handlers: how long importing each handler module takes.

Each measurement is a fresh interpreter timing ``importlib.import_module(name)`` with
``time.perf_counter`` (interpreter start-up itself excluded). Baseline: ``import boto3`` alone,
measured in the same rounds (modules are interleaved round by round, so machine load hits all
of them alike). Prints the median of ``--runs`` interpreters per module, its ratio to boto3, and
for every module over ``--target-ms`` the packages that cost the most (``-X importtime``,
cumulative time of each top-level package the module pulls in, boto3 included if it does).

Byte code: every module, ours included, is imported from byte code compiled beforehand (an
untimed warm-up import per module fills a temporary ``PYTHONPYCACHEPREFIX``). Without it the
baseline read site-packages' ``.pyc`` files while our own modules were compiled from source on
every run (``PYTHONDONTWRITEBYTECODE`` is set in this environment), which charged the handlers
for compiling ``offload/`` and ``lambdas/``.

Deferred imports: handlers import psycopg, bullmq and boto3 on the first invocation that needs
them (``lambdas/runtime.py``), so a cold start costs the import *plus* what the first
invocation loads. The "first call" column measures that honestly: in the same interpreter,
after the handler import, the time to import what the handler's main path loads on its first
invocation in AWS (``FIRST_CALL``; boto3 for the Secrets Manager read every function does at
its first call, ``runtime.settings()``). Only the import column is held to ``--target-ms``.

    .venv/bin/python bench/handler_import.py              # 7 runs per module
    .venv/bin/python bench/handler_import.py --runs 11 --target-ms 250
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
HANDLERS = ("lambdas.api", "lambdas.enqueue", "lambdas.queue_metrics", "lambdas.reconciler")
BASELINE = "boto3"
# What each handler's main path imports on its first invocation in AWS, on top of the handler
# module itself (already-loaded modules cost nothing). Every function reads a secret at its
# first call (runtime.settings(): boto3 + Secrets Manager); the store, pool and producer
# modules are those of lambdas/runtime.py.
_STORE = ("offload.db.pool", "offload.db.uploads", "offload.db.status", "offload.queue")
FIRST_CALL: dict[str, tuple[str, ...]] = {
    BASELINE: (),
    "lambdas.api": ("boto3", *_STORE, "offload.jobs_service"),  # presigned URLs, rows, jobs
    "lambdas.enqueue": ("boto3", *_STORE),  # an accepted upload: row, status row, queue
    "lambdas.queue_metrics": ("boto3",),  # queue counts (bullmq), PutMetricData (boto3)
    "lambdas.reconciler": ("boto3", *_STORE),
}

_TIMER = """
import importlib, sys, time
started = time.perf_counter()
importlib.import_module(sys.argv[1])
imported = time.perf_counter()
for extra in sys.argv[2:]:
    importlib.import_module(extra)
print((imported - started) * 1000, (time.perf_counter() - imported) * 1000)
"""

# Byte code for every module (stdlib, site-packages and ours alike), written by the warm-up.
_BYTECODE_CACHE = tempfile.TemporaryDirectory(prefix="handler-import-pyc-")


def _env(*, write_bytecode: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    env.setdefault("POWERTOOLS_SERVICE_NAME", "offload-bench")
    env.setdefault("POWERTOOLS_METRICS_NAMESPACE", "OffloadBench")
    env["PYTHONPYCACHEPREFIX"] = _BYTECODE_CACHE.name
    if write_bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def exists(module: str) -> bool:
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([sys.executable, "-c", probe], env=_env(), cwd=REPO_ROOT).returncode == 0


def import_ms(module: str, *, write_bytecode: bool = False) -> tuple[float, float]:
    """(import of ``module``, then import of its ``FIRST_CALL`` modules), in ms."""
    out = subprocess.run(
        [sys.executable, "-c", _TIMER, module, *FIRST_CALL.get(module, ())],
        env=_env(write_bytecode=write_bytecode),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    handler_ms, first_call_ms = out.stdout.strip().splitlines()[-1].split()
    return float(handler_ms), float(first_call_ms)


def heaviest_packages(module: str, top: int = 10) -> list[tuple[str, float]]:
    """Top-level packages ranked by the time spent importing them (``-X importtime``): for
    each package, the cumulative time of every import that enters it from outside (its
    own sub-imports are inside those). A package's time includes the packages it pulls in
    (which also appear on their own line), so the figures overlap and do not add up."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        env=_env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    entries: list[tuple[int, str, float]] = []
    for line in out.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3 or not fields[1].strip().isdigit():
            continue
        raw_name = fields[2].rstrip()
        depth = len(raw_name) - len(raw_name.lstrip())
        entries.append((depth, raw_name.strip(), int(fields[1]) / 1000))
    # importtime prints children before their parent: reversed, a parent precedes its children.
    totals: dict[str, float] = {}
    stack: list[tuple[int, str]] = []
    for depth, name, cumulative in reversed(entries):
        while stack and stack[-1][0] >= depth:
            stack.pop()
        package = name.split(".")[0]
        parent_package = stack[-1][1].split(".")[0] if stack else None
        if parent_package != package:
            totals[package] = totals.get(package, 0.0) + cumulative
        stack.append((depth, name))
    own = module.split(".")[0]
    ranked = sorted(((n, ms) for n, ms in totals.items() if n != own), key=lambda x: -x[1])
    return ranked[:top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="fresh interpreters per module (≥5)")
    parser.add_argument("--target-ms", type=float, default=250.0)
    args = parser.parse_args()
    runs = max(5, args.runs)

    present = [m for m in HANDLERS if exists(m)]
    for missing in sorted(set(HANDLERS) - set(present)):
        print(f"SKIP {missing}: module not found")
    modules = [BASELINE, *present]
    for module in modules:  # untimed: compiles every module's byte code into the cache
        import_ms(module, write_bytecode=True)
    samples: dict[str, list[float]] = {m: [] for m in modules}
    first_call: dict[str, list[float]] = {m: [] for m in modules}
    for _ in range(runs):
        for module in modules:
            handler_ms, extra_ms = import_ms(module)
            samples[module].append(handler_ms)
            first_call[module].append(handler_ms + extra_ms)

    baseline = statistics.median(samples[BASELINE])
    print(
        f"\nimport time, median of {runs} fresh interpreters, from byte code "
        f"(python {sys.version.split()[0]})\n"
    )
    print(
        f"{'module':<24}{'median ms':>11}{'min ms':>9}{'max ms':>9}{'x boto3':>9}  target"
        f"{'first call ms':>16}"
    )
    for module in modules:
        values = samples[module]
        median = statistics.median(values)
        verdict = "" if module == BASELINE else ("ok" if median <= args.target_ms else "OVER")
        cold = statistics.median(first_call[module])
        print(
            f"{module:<24}{median:>11.1f}{min(values):>9.1f}{max(values):>9.1f}"
            f"{median / baseline:>9.2f}  {verdict:<6}{cold:>16.1f}"
        )
    print(
        "\nfirst call ms: import + what the first invocation imports in AWS (FIRST_CALL in this"
        " file),\nmedian of the same interpreters; not held to the target.\n"
    )
    for module in present:
        median = statistics.median(samples[module])
        cold = statistics.median(first_call[module])
        print(
            f"RESULT module={module} median_ms={median:.1f} "
            f"ratio_to_boto3={median / baseline:.2f} boto3_median_ms={baseline:.1f} runs={runs} "
            f"first_call_ms={cold:.1f}"
        )
    over = [m for m in present if statistics.median(samples[m]) > args.target_ms]
    for module in over:
        print(f"\n{module}: heaviest packages it imports (-X importtime, cumulative ms, one run)")
        for name, ms in heaviest_packages(module):
            print(f"  {name:<28}{ms:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
