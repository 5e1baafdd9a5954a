"""Cold-start cost of the Lambda handlers: how long importing each handler module takes.

Each measurement is a fresh interpreter timing ``importlib.import_module(name)`` with
``time.perf_counter`` (interpreter start-up itself excluded). Baseline: ``import boto3`` alone,
measured in the same rounds (modules are interleaved round by round, so machine load hits all
of them alike). Prints the median of ``--runs`` interpreters per module, its ratio to boto3, and
for every module over ``--target-ms`` the packages that cost the most (``-X importtime``,
cumulative time of each top-level package the module pulls in, boto3 included if it does).

    .venv/bin/python bench/handler_import.py              # 7 runs per module
    .venv/bin/python bench/handler_import.py --runs 11 --target-ms 250
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
HANDLERS = ("lambdas.api", "lambdas.enqueue", "lambdas.queue_metrics", "lambdas.reconciler")
BASELINE = "boto3"

_TIMER = """
import importlib, sys, time
started = time.perf_counter()
importlib.import_module(sys.argv[1])
print((time.perf_counter() - started) * 1000)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    env.setdefault("POWERTOOLS_SERVICE_NAME", "offload-bench")
    env.setdefault("POWERTOOLS_METRICS_NAMESPACE", "OffloadBench")
    return env


def exists(module: str) -> bool:
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([sys.executable, "-c", probe], env=_env(), cwd=REPO_ROOT).returncode == 0


def import_ms(module: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _TIMER, module],
        env=_env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


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
    samples: dict[str, list[float]] = {m: [] for m in modules}
    for _ in range(runs):
        for module in modules:
            samples[module].append(import_ms(module))

    baseline = statistics.median(samples[BASELINE])
    print(f"\nimport time, median of {runs} fresh interpreters (python {sys.version.split()[0]})\n")
    print(f"{'module':<24}{'median ms':>11}{'min ms':>9}{'max ms':>9}{'x boto3':>9}  target")
    for module in modules:
        values = samples[module]
        median = statistics.median(values)
        verdict = "" if module == BASELINE else ("ok" if median <= args.target_ms else "OVER")
        print(
            f"{module:<24}{median:>11.1f}{min(values):>9.1f}{max(values):>9.1f}"
            f"{median / baseline:>9.2f}  {verdict}"
        )
    print()
    for module in present:
        median = statistics.median(samples[module])
        print(
            f"RESULT module={module} median_ms={median:.1f} "
            f"ratio_to_boto3={median / baseline:.2f} boto3_median_ms={baseline:.1f} runs={runs}"
        )
    over = [m for m in present if statistics.median(samples[m]) > args.target_ms]
    for module in over:
        print(f"\n{module}: heaviest packages it imports (-X importtime, cumulative ms, one run)")
        for name, ms in heaviest_packages(module):
            print(f"  {name:<28}{ms:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
