"""``python -m stacks.cost -c env=dev [--templates DIR] [--prices FILE] [--workload ...]``.

Prints the idle monthly baseline of an environment line by line and ``total: $N / month``,
then what 1,000 uploads of a given size cost, and a stated workload's month. ``--help`` and
argument errors exit before anything is synthesised.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from stacks.cost import baseline, prices, report, templates, usage

DEFAULT_WORKLOAD = usage.DEFAULT_WORKLOAD


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stacks.cost",
        description="The monthly bill of an environment before deploying it: its idle "
        "baseline from the synthesised templates, and what uploads cost, at the list prices "
        "of a price table kept in the repository.",
    )
    parser.add_argument(
        "-c",
        "--context",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="CDK context, as for app.py (env=prod picks the environment; default dev)",
    )
    parser.add_argument(
        "--templates",
        type=Path,
        metavar="DIR",
        help="read these synthesised templates (e.g. cdk.out/prod) instead of synthesising",
    )
    parser.add_argument(
        "--prices",
        type=Path,
        metavar="FILE",
        help=f"another price table (default {prices.DEFAULT_TABLE.name}, same layout)",
    )
    parser.add_argument(
        "--workload",
        default=DEFAULT_WORKLOAD,
        metavar="TEXT",
        help=f"the usage to price, e.g. '{DEFAULT_WORKLOAD}'",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=usage.Assumptions.processing_mb_per_s,
        metavar="MB/S",
        help="processing speed of one job slot (default %(default)s MB/s)",
    )
    parser.add_argument(
        "--keep-days",
        type=int,
        default=usage.Assumptions.keep_days,
        metavar="DAYS",
        help="how long uploads stay in S3 for the storage lines (default %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        args.parsed_workload = usage.parse_workload(args.workload)
    except ValueError as exc:
        parser.error(str(exc))
    if args.rate <= 0 or args.keep_days < 1:
        parser.error("--rate must be > 0 and --keep-days >= 1")
    return args


def env_of(context: list[str]) -> str:
    """The environment the context pairs name, as stacks/config.py reads them."""
    pairs = dict(pair.partition("=")[::2] for pair in context)
    return pairs.get("env") or pairs.get("offload:env") or "dev"


def render(
    env: str,
    t: templates.Templates,
    p: prices.Prices,
    workload: usage.Workload,
    a: usage.Assumptions,
) -> str:
    lines = baseline.baseline(t, p)
    per_1000 = usage.per_thousand(workload.upload_bytes, t, p, a)
    month = usage.monthly(workload, t, p, a)
    size = usage.size_text(workload.upload_bytes)
    tasks = usage.average_tasks(workload, t, a)
    parts = [
        report.baseline_text(env, lines, p, baseline.unpriced(t)),
        "",
        report.usage_text(
            f"per 1,000 uploads of {size}:", per_1000, f"per 1,000 uploads of {size}"
        ),
        "",
        report.usage_text(
            f"workload: {workload} ({workload.uploads_per_month:,.0f} uploads a month, "
            f"{tasks:.2f} worker tasks busy on average), a month after {a.keep_days} days:",
            month,
            "usage",
        ),
        f"baseline + usage: {report.money(sum(x.monthly for x in lines + month))} / month",
        "",
        "assumptions (not in the templates): " + "; ".join(a.describe()),
    ]
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        table = prices.load(args.prices)
    except (OSError, ValueError, prices.PriceError) as exc:
        print(f"stacks.cost: error: {exc}", file=sys.stderr)
        return 2
    env = env_of(args.context)
    a = usage.Assumptions(processing_mb_per_s=args.rate, keep_days=args.keep_days)
    try:
        with tempfile.TemporaryDirectory(prefix="offload-cost-") as scratch:
            t = (
                templates.read(args.templates)
                if args.templates
                else templates.synth(
                    [f"env={env}", *[c for c in args.context if not c.startswith("env=")]],
                    Path(scratch),
                )
            )
            print(render(env, t, table, args.parsed_workload, a))
    except (templates.TemplateError, prices.PriceError) as exc:
        print(f"stacks.cost: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
