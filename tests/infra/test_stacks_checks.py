"""The checks that gate every synth: cdk-nag (findings fail synth), cfn-lint (no errors),
the configuration's validation, and synth needing no credentials."""

from __future__ import annotations

import os
import subprocess
import sys

import aws_cdk as cdk
import pytest
from aws_cdk import aws_sqs as sqs
from cdk_nag import AwsSolutionsChecks

from stacks.config import ConfigError, load, parse
from tests.infra.conftest import ROOT, Synth, file_context

CFN_LINT = "import sys; from cfnlint.runner import main; sys.exit(main())"


def test_both_environments_synthesise_with_cdk_nag_clean(dev: Synth, prod: Synth) -> None:
    # The fixtures synthesised with AwsSolutionsChecks registered: an unacknowledged finding
    # would have raised. The report confirms the plugin ran and found nothing.
    for synth in (dev, prod):
        report = (synth.outdir / "validation-report.json").read_text()
        assert '"pluginReports": []' in report or '"violations": []' in report
        assert len(synth.stacks.all()) == 9


def test_an_unacknowledged_finding_fails_synth(tmp_path) -> None:
    app = cdk.App(outdir=str(tmp_path), builtin_cloud_formation_validation=False)
    stack = cdk.Stack(app, "Bad")
    sqs.Queue(stack, "Unencrypted", encryption=sqs.QueueEncryption.UNENCRYPTED)
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()
    assert "AwsSolutions-SQS2" in (tmp_path / "validation-report.json").read_text()


def test_cfn_lint_finds_no_errors(dev: Synth, prod: Synth) -> None:
    templates = [str(p) for s in (dev, prod) for p in sorted(s.outdir.glob("*.template.json"))]
    assert len(templates) == 18
    result = subprocess.run(
        [sys.executable, "-c", CFN_LINT, "--format", "parseable", *templates],
        capture_output=True,
        text=True,
        check=False,
    )
    # 0 = clean, 4 = warnings only; 2 (errors) or anything else fails.
    assert result.returncode in (0, 4), result.stdout + result.stderr
    assert ":E" not in result.stdout


def test_synth_needs_no_credentials_or_account(dev: Synth) -> None:
    for stack in dev.stacks.all():
        assert cdk.Token.is_unresolved(stack.account)  # environment-agnostic
        assert cdk.Token.is_unresolved(stack.region)


def test_config_rejects_unknown_and_missing_keys() -> None:
    context = file_context()
    raw = context["offload:environments"]["dev"]
    with pytest.raises(ConfigError, match=r"unknown key dev\.redis\.nodeCount"):
        parse("dev", {**raw, "redis": {**raw["redis"], "nodeCount": 2}})
    broken = dict(raw["storage"])
    del broken["abortIncompleteMultipartAfterDays"]
    with pytest.raises(ConfigError, match="missing"):
        parse("dev", {**raw, "storage": broken})
    with pytest.raises(ConfigError, match="retention"):
        parse("dev", {**raw, "observability": {**raw["observability"], "logRetentionDays": 8}})
    with pytest.raises(ConfigError, match="web origin"):
        parse("dev", {**raw, "webOrigins": ["*"]})
    with pytest.raises(ConfigError, match="exactly one origin"):
        parse("dev", {**raw, "webOrigins": ["https://a.example.com", "https://b.example.com"]})


def test_environment_comes_from_context() -> None:
    for key in ("env", "offload:env"):
        app = cdk.App(context=file_context(**{key: "prod"}))
        assert load(app.node).name == "prod"
    assert load(cdk.App(context=file_context()).node).name == "dev"
    with pytest.raises(ConfigError, match="unknown environment"):
        load(cdk.App(context=file_context(env="staging")).node)


def test_python_app_py_synthesises_every_environment_offline(tmp_path) -> None:
    """``python app.py`` (no CDK CLI) reads cdk.json itself; bundling skipped to stay fast."""
    for env in ("dev", "prod"):
        outdir = tmp_path / env
        result = subprocess.run(
            [sys.executable, "app.py", "-c", f"env={env}", "-c", "offload:skipBundling=true"],
            cwd=ROOT,
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CDK_"))},
                "CDK_OUTDIR": str(outdir),
            },
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert len(list(outdir.glob(f"Offload-{env}-*.template.json"))) == 9
