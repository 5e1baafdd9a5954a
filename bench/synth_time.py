"""Time a full synth of every stack (``python app.py -c env=ENV``), median of N runs.

Each run is a fresh process writing to a fresh output directory, as ``cdk synth`` does:
jsii start-up, the nine stacks, cdk-nag, the real Lambda bundling (from the warm
``.cdk-cache``; one untimed warm-up run fills it when needed) and the worker image staging.
Baseline, measured in the same run: a fresh process that synthesises an empty CDK app with
cdk-nag loaded (the fixed cost of jsii and the libraries).

    .venv/bin/python bench/synth_time.py                 # dev and prod, 3 runs each
    .venv/bin/python bench/synth_time.py --env dev --runs 5 --cli

``--cli`` also times ``cdk synth`` through the pinned CDK CLI (cdk-cli/node_modules).
Target: a full synth in 15 s or less.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 15.0
BASELINE = (
    "import aws_cdk as cdk, cdk_nag, sys; app = cdk.App(outdir=sys.argv[1]); "
    "cdk.Validations.of(app).add_plugins(cdk_nag.AwsSolutionsChecks(app)); app.synth()"
)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDK_", "AWS_"))}
    env["JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION"] = "18,20"
    return env


def timed(command: list[str], outdir_env: bool) -> float:
    with tempfile.TemporaryDirectory(prefix="synth-bench-") as outdir:
        env = _env()
        if outdir_env:
            env["CDK_OUTDIR"] = outdir
        args = [a.replace("{outdir}", outdir) for a in command]
        started = time.perf_counter()
        result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return elapsed


def series(label: str, command: list[str], runs: int, outdir_env: bool = True) -> float:
    times = [timed(command, outdir_env) for _ in range(runs)]
    median = statistics.median(times)
    print(f"{label:<34} median {median:6.2f} s   runs: {', '.join(f'{t:.2f}' for t in times)}")
    return median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", action="append", choices=["dev", "prod"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cli", action="store_true", help="also time the pinned CDK CLI")
    args = parser.parse_args()
    envs = args.env or ["dev", "prod"]
    python = sys.executable

    warm = timed([python, "app.py", "-c", f"env={envs[0]}"], True)
    print(f"warm-up (fills .cdk-cache if empty)  {warm:6.2f} s")
    baseline = series(
        "baseline: empty app + cdk-nag", [python, "-c", BASELINE, "{outdir}"], args.runs, False
    )
    results = {}
    for env in envs:
        results[env] = series(
            f"python app.py -c env={env}", [python, "app.py", "-c", f"env={env}"], args.runs
        )
    cli = ROOT / "cdk-cli" / "node_modules" / ".bin" / "cdk"
    if args.cli:
        if not cli.exists():
            sys.exit("cdk-cli/node_modules is missing: run `npm ci --prefix cdk-cli` first")
        for env in envs:
            results[f"cli-{env}"] = series(
                f"cdk synth -c env={env} (CLI)",
                [
                    str(cli),
                    "synth",
                    "--quiet",
                    "-c",
                    f"env={env}",
                    "--app",
                    f"{python} app.py",
                    "--output",
                    "{outdir}",
                ],
                args.runs,
                False,
            )
    worst = max(results.values())
    for name, median in results.items():
        print(f"ratio {name} / baseline: {median / baseline:.2f}")
    verdict = "met" if worst <= TARGET_S else "NOT met"
    print(f"target <= {TARGET_S:.0f} s: {verdict} (slowest median {worst:.2f} s)")
    figures = " ".join(f"{name}={median:.2f}s" for name, median in results.items())
    print(f"RESULT synth_time baseline={baseline:.2f}s {figures} target_met={worst <= TARGET_S}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
