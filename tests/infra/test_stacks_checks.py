"""The checks that gate every synth: cdk-nag (findings fail synth), cfn-lint (no errors),
the configuration's validation, and synth needing no credentials."""

from __future__ import annotations

import json
import subprocess
import sys

import aws_cdk as cdk
import pytest
from aws_cdk import aws_s3 as s3

import app as offload_app
from stacks.config import ConfigError, load, parse
from tests.infra.conftest import Synth, file_context

CFN_LINT = "import sys; from cfnlint.runner import main; sys.exit(main())"


def test_both_environments_synthesise_with_cdk_nag_clean(dev: Synth, prod: Synth) -> None:
    # The fixtures synthesised through app.build, which registers cdk-nag: a finding would
    # have raised. An empty report only says that the registered plugins found nothing, not
    # which ran: test_cdk_nag_runs_on_the_app_as_app_py_builds_it proves cdk-nag is one.
    for synth in (dev, prod):
        report = json.loads((synth.outdir / "validation-report.json").read_text())
        assert report["pluginReports"] == []
        assert len(synth.stacks.all()) == 9


def test_cdk_nag_runs_on_the_app_as_app_py_builds_it(tmp_path) -> None:
    """The app built as ``app.py`` builds it (``new_app``, then ``build``, which registers
    cdk-nag), plus one bucket without server access logs or an SSL-only policy: synth fails
    with AwsSolutions findings on that bucket. Without cdk-nag in ``build`` it would pass."""
    app = offload_app.new_app(
        context=file_context(env="dev", **{"offload:skipBundling": True}), outdir=str(tmp_path)
    )
    offload_app.build(app)
    s3.Bucket(cdk.Stack(app, "Offload-dev-NagProbe"), "NonCompliant")
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()
    report = json.loads((tmp_path / "validation-report.json").read_text())
    findings = {
        (violation["ruleName"], construct["constructPath"])
        for plugin in report["pluginReports"]
        if plugin["pluginName"] == "AwsSolutions"
        for violation in plugin["violations"]
        for construct in violation["violatingConstructs"]
    }
    probe = "Offload-dev-NagProbe/NonCompliant/Resource"
    assert {("AwsSolutions-S1", probe), ("AwsSolutions-S10", probe)} <= findings
    assert {path for _, path in findings} == {probe}  # the real stacks have none


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
