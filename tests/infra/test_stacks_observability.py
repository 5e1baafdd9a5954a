"""Observability: one dashboard with every promised widget, paging alarms to one SNS topic."""

from __future__ import annotations

import json

from tests.infra.conftest import Synth


def dashboard_body(synth: Synth) -> str:
    dashboard = synth.one(synth.stacks.observability, "AWS::CloudWatch::Dashboard")
    # The body is an Fn::Join of strings and references; its literal parts are enough here.
    return json.dumps(dashboard["DashboardBody"])


def test_the_dashboard_only_where_the_environment_pays_for_it(dev: Synth) -> None:
    """observability.dashboard: false in dev ($3 a month); the alarms do not need it."""
    assert not dev.resources(dev.stacks.observability, "AWS::CloudWatch::Dashboard")
    assert dev.resources(dev.stacks.observability, "AWS::CloudWatch::Alarm")


def test_one_dashboard_with_every_metric(prod: Synth) -> None:
    body = dashboard_body(prod)
    for needle in (
        # queue (queue-metrics Lambda) and jobs (worker EMF), namespace Offload, dimension Queue
        '\\"Offload\\",\\"Waiting\\",\\"Queue\\",\\"uploads\\"',
        '\\"Active\\"',
        '\\"OldestWaitingAge\\"',
        '\\"JobsCompleted\\"',
        '\\"JobsFailed\\"',
        '\\"JobDuration\\"',
        '\\"stat\\":\\"p50\\"',
        '\\"stat\\":\\"p90\\"',
        '\\"stat\\":\\"p99\\"',
        # workers
        '\\"Offload\\",\\"RunningTasks\\",\\"Queue\\",\\"uploads\\"',
        '\\"AWS/ECS\\",\\"CPUUtilization\\"',
        '\\"AWS/ECS\\",\\"MemoryUtilization\\"',
        # Lambdas
        '\\"AWS/Lambda\\",\\"Errors\\"',
        '\\"AWS/Lambda\\",\\"Throttles\\"',
        '\\"AWS/Lambda\\",\\"Duration\\"',
        # SQS and the DLQ
        '\\"ApproximateNumberOfMessagesVisible\\"',
        # ElastiCache
        '\\"DatabaseMemoryUsagePercentage\\"',
        '\\"EngineCPUUtilization\\"',
        '\\"CurrConnections\\"',
        # RDS
        '\\"AWS/RDS\\",\\"CPUUtilization\\"',
        '\\"AWS/RDS\\",\\"DatabaseConnections\\"',
    ):
        assert needle in body, needle


def alarms(synth: Synth) -> dict[str, dict]:
    return synth.resources(synth.stacks.observability, "AWS::CloudWatch::Alarm")


def test_paging_alarms_exist_and_notify_the_topic(dev: Synth) -> None:
    found = alarms(dev)
    names = " ".join(found)
    for expected in (
        "OldestWaitingJob",
        "QueueMetricsMissing",
        "BacklogWithoutWorkers",
        "JobsFailing",
        "UploadEventsDlq",
        "ApiErrors",
        "EnqueueErrors",
        "QueueMetricsErrors",
        "ReconcilerErrors",
        "EnqueueThrottles",
        "EnqueueMalformedMessages",
        "Api5xx",
        "RedisMemoryNode1",
        "RedisEngineCpuNode1",
        "DatabaseCpu",
        "DatabaseFreeStorage",
    ):
        assert expected in names, expected
    topic_ids = list(dev.resources(dev.stacks.observability, "AWS::SNS::Topic"))
    assert len(topic_ids) == 1
    for alarm in found.values():
        props = alarm["Properties"]
        assert props["AlarmActions"] == [{"Ref": topic_ids[0]}]
        assert props["OKActions"] == [{"Ref": topic_ids[0]}]
        assert props["AlarmDescription"]


def test_one_redis_alarm_per_node(prod: Synth) -> None:
    names = " ".join(alarms(prod))
    assert "RedisMemoryNode1" in names and "RedisMemoryNode2" in names


def test_missing_queue_metrics_page_someone(dev: Synth) -> None:
    [missing] = [a["Properties"] for k, a in alarms(dev).items() if "QueueMetricsMissing" in k]
    assert missing["TreatMissingData"] == "breaching"
    assert missing["Statistic"] == "SampleCount"
    assert missing["MetricName"] == "Waiting"


def test_dlq_alarm_on_the_first_message(dev: Synth) -> None:
    [dlq] = [a["Properties"] for k, a in alarms(dev).items() if "UploadEventsDlq" in k]
    assert dlq["Threshold"] == 1
    assert dlq["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert "UploadEventsDlq" in json.dumps(dlq["Dimensions"])


def test_topic_requires_tls_and_lets_the_alarms_publish(dev: Synth) -> None:
    policy = dev.one(dev.stacks.observability, "AWS::SNS::TopicPolicy")
    statements = policy["PolicyDocument"]["Statement"]
    assert any(
        s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for s in statements
    )
    # The topic policy replaces SNS's default one: CloudWatch needs its own Allow.
    [allow] = [s for s in statements if s["Effect"] == "Allow"]
    assert allow["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert allow["Action"] == "sns:Publish"
    assert allow["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}


def test_the_5xx_alarm_watches_this_environments_api_only(dev: Synth, prod: Synth) -> None:
    """API Gateway's metrics are keyed by API name: each environment names its own."""
    for synth, name in ((dev, "offload-dev"), (prod, "offload-prod")):
        api = synth.one(synth.stacks.api, "AWS::ApiGateway::RestApi")
        assert api["Name"] == name
        [alarm] = [a for key, a in alarms(synth).items() if "Api5xx" in key]
        assert {"Name": "ApiName", "Value": name} in alarm["Properties"]["Dimensions"]
