"""The cost tool (``python -m stacks.cost``): a hand-counted template priced line by line, the
real dev and prod templates priced completely (every resource type classified, totals that add
up), the command line, and docs/deploy.md's cost section generated, never stale."""

from __future__ import annotations

import ast
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stacks.cost import baseline, docs, prices, templates, usage
from stacks.cost.model import total
from tests.infra.conftest import ROOT, Synth

FIXTURE = Path(__file__).with_name("fixtures") / "cost-tiny.template.json"
H = 730  # hours a month, as the price table says


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> templates.Templates:
    folder = tmp_path_factory.mktemp("tiny")
    shutil.copy(FIXTURE, folder / "Tiny.template.json")
    return templates.read(folder)


def by_item(lines: list) -> dict[str, float]:
    return {line.item: line.monthly for line in lines}


def test_the_hand_counted_template_is_priced_line_by_line(tiny: templates.Templates) -> None:
    p = prices.load()
    spot_vcpu = 0.25 * 0.04048 + 0.75 * 0.01214  # 3:1 FARGATE_SPOT:FARGATE
    spot_gb = 0.25 * 0.004445 + 0.75 * 0.00133
    expected = {
        "NAT gateway": 0.045 * H,
        "public IPv4 address (Elastic IP)": 0.005 * H,
        "interface VPC endpoint (1 services, per AZ)": 2 * 0.01 * H,  # two subnets = two AZs
        "RDS PostgreSQL db.t4g.micro Multi-AZ": 2 * 0.016 * H,
        "RDS gp3 storage (Multi-AZ: twice)": 20 * 2 * 0.115,
        "RDS Proxy (per vCPU of its instance)": 2 * 0.015 * H,
        "ElastiCache cache.t4g.micro": 2 * 0.016 * H,
        "Fargate vCPU, minimum 1 tasks x 1 vCPU (75% Spot)": 1 * spot_vcpu * H,
        "Fargate memory, minimum 1 tasks x 2 GB": 2 * spot_gb * H,
        "public IPv4 address (one per running worker task)": 0.005 * H,
        "Container Insights metrics (1 service(s))": 22 * 0.30,
        "CloudWatch alarm metrics (2 alarms)": 3 * 0.10,  # 1 + a math alarm of 2 metrics
        "CloudWatch dashboard": 3.00,
        # the queue-metrics function's 6 and the worker's 5 (Waiting and Runnable are also
        # what the math alarm and the dashboard read)
        "custom metrics, main queue (Offload)": 11 * 0.30,
        "Secrets Manager secret": 0.40,
        "KMS key": 1.00,
        "Lambda requests on schedules (rate(5 minutes))": H * 12 / 1e6 * 0.20,
        "Lambda compute on schedules (1 s a run assumed)": H * 12 * 0.5 * 0.0000166667,
        "SQS long polls by Lambda (5 pollers x 1 mapping(s))": 5 * H * 3600 / 20 / 1e6 * 0.40,
    }
    lines = baseline.baseline(tiny, p)
    assert by_item(lines) == pytest.approx(expected, rel=1e-9)
    assert list(by_item(lines)) == list(expected)  # the order the report prints
    assert total(lines) == pytest.approx(sum(expected.values()))
    assert baseline.unpriced(tiny) == []
    published = {*baseline.PUBLISHED_BY_HANDLER["lambdas.queue_metrics.handler"]}
    published |= set(baseline.PUBLISHED_BY_WORKERS)
    assert baseline.custom_metrics(tiny) == {("Offload", name) for name in published}


def test_what_each_choice_costs_in_the_hand_counted_template(tiny: templates.Templates) -> None:
    savings = {line.saving_what: line.saving for line in baseline.baseline(tiny, prices.load())}
    assert savings["single-AZ PostgreSQL"] == pytest.approx(20 * 0.115)  # the storage line's
    assert savings["one Redis node (no replica, no failover)"] == pytest.approx(0.016 * H)
    assert savings["no interface endpoints"] == pytest.approx(2 * 0.01 * H)
    assert savings["no RDS Proxy (Lambdas straight to the instance)"] == pytest.approx(0.03 * H)


def test_a_thousand_uploads_of_500_mb_in_the_hand_counted_template(
    tiny: templates.Templates,
) -> None:
    size = 500 * 1000**2
    lines = {line.item: line for line in usage.per_thousand(size, tiny, prices.load())}
    parts = math.ceil(size / (16 * 1024**2))  # 30 parts of 16 MiB
    puts = lines["S3 PUT/POST requests (upload parts, outputs)"]
    assert puts.count == parts + 2 + 2  # create, parts, complete; two outputs
    gb = size / 1024**3
    standard = lines["S3 STANDARD storage (30 days)"]
    assert standard.count == pytest.approx(1000 * gb * 30 / (H / 24))
    archived = lines["S3 GLACIER_IR storage (335 days billed)"]
    assert archived.monthly == pytest.approx(1000 * gb * 335 / (H / 24) * 0.004)
    vcpu = lines["Fargate vCPU (7.0 s a job at 100 MB/s, 2 jobs a task)"]
    assert vcpu.count == pytest.approx(1000 * 7 / 2 / 3600)  # 5 s of bytes + 2 s, 2 per task
    assert lines["public IPv4 of the running worker tasks"].count == pytest.approx(vcpu.count)
    assert lines["API Gateway REST requests"].monthly == pytest.approx(4000 / 1e6 * 3.50)
    # a small upload: one POST, never transitioned, and no archive line
    small = {line.item for line in usage.per_thousand(100_000, tiny, prices.load())}
    assert not any("GLACIER" in item for item in small)


def test_a_workload_month_scales_the_per_upload_lines(tiny: templates.Templates) -> None:
    workload = usage.parse_workload("10,000 uploads/day of 500 MB")
    assert workload == usage.Workload(10_000, 500 * 1000**2)
    p = prices.load()
    month = {line.item: line for line in usage.monthly(workload, tiny, p)}
    one = {line.item: line for line in usage.per_thousand(workload.upload_bytes, tiny, p)}
    scale = 10_000 * H / 24 / 1000
    item = "API Gateway REST requests"
    assert month[item].monthly == pytest.approx(one[item].monthly * scale)
    held = month["S3 STANDARD storage held (30 days of uploads)"]
    assert held.count == pytest.approx(10_000 * 30 * workload.upload_bytes / 1024**3)
    for bad in ("lots of uploads", "10 uploads/day of", "0 uploads/day of 5 MB"):
        with pytest.raises(ValueError):
            usage.parse_workload(bad)


@pytest.fixture(scope="module")
def real(dev: Synth, prod: Synth) -> dict[str, templates.Templates]:
    return {"dev": templates.read(dev.outdir), "prod": templates.read(prod.outdir)}


def test_every_resource_type_of_both_environments_is_classified(
    real: dict[str, templates.Templates],
) -> None:
    for env, t in real.items():
        assert baseline.unpriced(t) == [], env


def test_the_real_baselines_have_their_lines_and_consistent_totals(
    real: dict[str, templates.Templates],
) -> None:
    p = prices.load()
    dev, prod = (baseline.baseline(real[env], p) for env in ("dev", "prod"))
    for lines in (dev, prod):
        items = " | ".join(line.item for line in lines)
        for expected in (
            "RDS PostgreSQL",
            "RDS gp3 storage",
            "ElastiCache",
            "Fargate vCPU",
            "Secrets Manager secret",
            "CloudWatch alarm metrics",
        ):
            assert expected in items
        assert total(lines) == pytest.approx(
            sum(line.count * line.unit_price * line.quantity for line in lines)
        )
        assert all(line.monthly >= 0 for line in lines)
    assert "RDS PostgreSQL db.m7g.large Multi-AZ" in by_item(prod)
    assert "ElastiCache cache.m7g.large" in by_item(prod)
    nat = {line.item: line.count for line in prod}["NAT gateway"]
    assert nat == 2
    assert total(prod) > total(dev)
    assert "CloudWatch dashboard" in by_item(prod) and "CloudWatch dashboard" not in by_item(dev)
    choices = {line.saving_what for line in prod if line.saving}
    assert {
        "single-AZ PostgreSQL",
        "one Redis node (no replica, no failover)",
        "one NAT gateway instead of 2",
    } <= choices


def test_the_idle_dev_baseline_is_at_most_40_dollars(real: dict[str, templates.Templates]) -> None:
    """Issue 15's target, by the tool's own count: no NAT gateway, one Secrets Manager
    endpoint, no RDS Proxy, no Container Insights, no dashboard in dev."""
    lines = baseline.baseline(real["dev"], prices.load())
    assert total(lines) <= 40, total(lines)
    items = " | ".join(line.item for line in lines)
    for absent in ("NAT gateway", "RDS Proxy", "Container Insights", "dashboard"):
        assert absent not in items


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CDK_"))}
    return subprocess.run(
        [sys.executable, "-m", "stacks.cost", *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_the_command_prints_the_baseline_and_its_total(dev: Synth) -> None:
    done = run_tool("-c", "env=dev", "--templates", str(dev.outdir))
    assert done.returncode == 0, done.stderr
    lines = baseline.baseline(templates.read(dev.outdir), prices.load())
    assert f"total: ${total(lines):,.2f} / month" in done.stdout.splitlines()
    assert "per 1,000 uploads of 500 MB:" in done.stdout
    assert "workload: 10,000 uploads/day of 500 MB" in done.stdout
    assert "us-east-1 list prices taken" in done.stdout


def test_help_and_bad_arguments_synthesise_nothing(tmp_path: Path) -> None:
    done = run_tool("--help")
    assert done.returncode == 0 and "--prices" in done.stdout and "--workload" in done.stdout
    done = run_tool("--workload", "many", "--templates", str(tmp_path))
    assert done.returncode == 2 and "workload 'many'" in done.stderr
    done = run_tool("--templates", str(tmp_path))  # an empty folder: one line, no traceback
    assert done.returncode == 2 and "no *.template.json" in done.stderr


def test_another_price_table_and_a_missing_price(dev: Synth, prod: Synth, tmp_path: Path) -> None:
    table = json.loads(prices.DEFAULT_TABLE.read_text())
    table["vpc"]["natGatewayHour"] = 1.0
    (tmp_path / "mine.json").write_text(json.dumps(table))
    done = run_tool("--templates", str(prod.outdir), "--prices", str(tmp_path / "mine.json"))
    assert done.returncode == 0, done.stderr
    nat = next(line for line in done.stdout.splitlines() if "NAT gateway" in line)
    assert "$1,460.00" in nat  # 2 x $1 x 730 h
    del table["elasticache"]["nodeHour"]["cache.t4g.micro"]
    (tmp_path / "short.json").write_text(json.dumps(table))
    done = run_tool("--templates", str(dev.outdir), "--prices", str(tmp_path / "short.json"))
    assert done.returncode == 2
    assert "no price for elasticache.nodeHour.cache.t4g.micro" in done.stderr


def test_the_command_synthesises_when_given_no_templates() -> None:
    done = run_tool("-c", "env=prod")
    assert done.returncode == 0, done.stderr
    assert "offload prod:" in done.stdout and "db.m7g.large Multi-AZ" in done.stdout
    done = run_tool("-c", "env=staging")
    assert done.returncode == 2 and "unknown environment 'staging'" in done.stderr


def test_the_cost_section_of_deploy_md_is_generated_and_current(
    real: dict[str, templates.Templates],
) -> None:
    document = docs.DEPLOY_MD.read_text(encoding="utf-8")
    section = docs.section(real, prices.load())
    assert docs.replace(document, section) == document, (
        "docs/deploy.md's cost section is stale: run .venv/bin/python -m stacks.cost.docs"
    )
    assert "| **dev baseline** |" in section and "| **prod baseline** |" in section


def imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_tool_imports_neither_the_app_nor_the_runtime() -> None:
    """It reads templates only; and no runtime code (or the app) imports it."""
    for path in (ROOT / "stacks" / "cost").glob("*.py"):
        for name in imported(path):
            top = name.split(".")[0]
            assert top not in {"aws_cdk", "constructs", "cdk_nag", "offload", "lambdas", "app"}, (
                path,
                name,
            )
            assert top != "stacks" or name.startswith("stacks.cost"), (path, name)
    for root in (ROOT / "offload", ROOT / "lambdas", ROOT / "fargate_worker", ROOT / "app.py"):
        for path in [root] if root.is_file() else root.rglob("*.py"):
            assert not any(n.startswith("stacks.cost") for n in imported(path)), path
