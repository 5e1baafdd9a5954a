"""The Lambdas read their environment through offload.settings.Settings.

One CloudWatch namespace for every component, decided there: ``OFFLOAD_METRICS_NAMESPACE``,
else Powertools' own ``POWERTOOLS_METRICS_NAMESPACE``, else ``Offload``. The Lambdas' EMF
metrics, the queue metrics the autoscaling reads and the workers' EMF must agree, whichever of
the two variables a deployment sets. Also there: the API's CORS origins and the secret of the
Redis AUTH token."""

from __future__ import annotations

import json
import subprocess
import sys

import boto3
import pytest

from lambdas import runtime
from offload.settings import Settings
from tests.support.apigw import REPO_ROOT, configure
from tests.support.events import (
    invoke_enqueue,
    invoke_reconciler,
    s3_test_event_body,
    sqs_event,
    sqs_record,
)
from tests.support.servers import unique_name


def emf_namespaces(stdout: str) -> set[str]:
    """The namespaces of the EMF documents in ``stdout``."""
    return {
        directive["Namespace"]
        for line in stdout.splitlines()
        if line.startswith("{") and '"_aws"' in line
        for directive in json.loads(line)["_aws"]["CloudWatchMetrics"]
    }


@pytest.mark.parametrize(
    ("env", "namespace"),
    [
        ({}, "Offload"),
        ({"POWERTOOLS_METRICS_NAMESPACE": "Theirs"}, "Theirs"),
        ({"OFFLOAD_METRICS_NAMESPACE": "Ours"}, "Ours"),
        ({"OFFLOAD_METRICS_NAMESPACE": "Ours", "POWERTOOLS_METRICS_NAMESPACE": "Theirs"}, "Ours"),
        ({"OFFLOAD_METRICS_NAMESPACE": "", "POWERTOOLS_METRICS_NAMESPACE": "Theirs"}, "Theirs"),
    ],
)
def test_the_namespace_rule(env, namespace):
    assert Settings.from_env(env).metrics_namespace == namespace


def test_the_enqueue_and_reconciler_functions_publish_in_the_settings_namespace(
    lambda_env, bucket, monkeypatch, capsys
):
    """lambda_env sets Powertools' variable: ours, set too, wins for both functions, as it
    does for the queue metrics function and the workers."""
    ours = unique_name("Ours")
    configure(monkeypatch, OFFLOAD_METRICS_NAMESPACE=ours)
    capsys.readouterr()
    event = sqs_event([sqs_record(s3_test_event_body(bucket), "test-event")])
    assert invoke_enqueue(event) == {"batchItemFailures": []}
    assert emf_namespaces(capsys.readouterr().out) == {ours}
    invoke_reconciler()
    assert emf_namespaces(capsys.readouterr().out) == {ours}


def test_the_api_publishes_in_the_settings_namespace():
    """A fresh interpreter (the API reads it at import, before any request): a refused request
    publishes ``ClientErrors`` in our namespace, not in Powertools'."""
    script = """
import lambdas.api as api
from tests.support.apigw import LambdaContext, event
print("status", api.handler(event("GET", "/jobs", sub=None), LambdaContext())["statusCode"])
"""
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO_ROOT),
        "POWERTOOLS_TRACE_DISABLED": "1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "OFFLOAD_METRICS_NAMESPACE": "Ours",
        "POWERTOOLS_METRICS_NAMESPACE": "Theirs",
    }
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "status 401" in out.stdout.splitlines()
    assert emf_namespaces(out.stdout) == {"Ours"}


def test_cors_origins_and_the_redis_auth_secret_are_settings(moto_endpoint, monkeypatch):
    env = {"OFFLOAD_CORS_ORIGIN": " https://a.example.com, ,https://b.example.com "}
    assert Settings.from_env(env).cors_origins == ("https://a.example.com", "https://b.example.com")
    assert Settings.from_env({}).cors_origins == ()
    arn = boto3.client("secretsmanager", endpoint_url=moto_endpoint).create_secret(
        Name=unique_name("redis"), SecretString="the-auth-token"
    )["ARN"]
    monkeypatch.setenv("SECRETS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("REDIS_AUTH_SECRET_ARN", arn)
    runtime.reset()
    try:
        settings = runtime.settings()
    finally:
        runtime.reset()
    assert settings.redis_auth_secret_arn == arn
    assert settings.redis_auth_token == "the-auth-token"
