"""Workers: the Fargate service, its container, least-privilege task role, backlog scaling."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stacks.config import ConfigError, PipelinesConfig, parse
from stacks.runtime_env import pipelines_env
from stacks.workers import HEALTH_COMMAND
from tests.infra.conftest import Synth, file_context


def container(synth: Synth) -> dict[str, Any]:
    task = synth.one(synth.stacks.workers, "AWS::ECS::TaskDefinition")
    [definition] = task["ContainerDefinitions"]
    return definition


def image_asset(synth: Synth) -> dict[str, Any]:
    """The worker image's entry in the workers stack's asset manifest."""
    stack_name = synth.stacks.workers.stack_name
    manifest = json.loads((synth.outdir / f"{stack_name}.assets.json").read_text())
    [image] = manifest["dockerImages"].values()
    return image


def test_image_is_the_worker_dockerfile_staged_not_built(dev: Synth) -> None:
    image = image_asset(dev)
    assert image["source"]["dockerFile"] == "fargate_worker/Dockerfile"
    staged = dev.outdir / image["source"]["directory"]
    assert (staged / "fargate_worker" / "Dockerfile").is_file()
    assert (staged / "offload" / "settings.py").is_file()
    # the CA the worker verifies the RDS instance by (verify-full), copied by COPY offload/
    assert (staged / "offload" / "db" / "ca" / "aws-database-roots.pem").is_file()
    assert not (staged / ".venv").exists() and not (staged / "tests").exists()
    assert "cdk-hnb659fds-container-assets" in json.dumps(container(dev)["Image"])


def test_image_context_leaves_the_cli_out(dev: Synth) -> None:
    """The CLI (offload_cli/) never runs in a worker: a CLI-only change must not change the
    image's build context (nor its hash, so the fleet is not redeployed for it)."""
    staged = dev.outdir / image_asset(dev)["source"]["directory"]
    assert (staged / "offload" / "settings.py").is_file()
    assert not (staged / "offload_cli").exists()
    assert not (staged / "offload" / "client").exists()
    assert not (staged / "offload" / "__main__.py").exists()


def test_stop_timeout_and_health_check(each_env: Synth) -> None:
    definition = container(each_env)
    assert definition["StopTimeout"] == 120
    assert definition["HealthCheck"]["Command"] == HEALTH_COMMAND
    assert definition["LogConfiguration"]["LogDriver"] == "awslogs"
    env = {e["Name"]: e["Value"] for e in definition["Environment"]}
    assert int(env["OFFLOAD_SHUTDOWN_GRACE_S"]) < 120


def test_no_secret_in_the_environment_redis_by_iam(dev: Synth) -> None:
    definition = container(dev)
    assert "Secrets" not in definition  # no Redis AUTH token: the worker signs an IAM token
    env = {e["Name"]: json.dumps(e["Value"]) for e in definition["Environment"]}
    assert env["REDIS_URL"].startswith('{"Fn::Join": ["", ["rediss://"')
    assert json.loads(env["REDIS_USER"]) == "offload-dev-worker"
    assert "ReplicationGroup" in env["REDIS_IAM_AUTH_CACHE"]
    # PostgreSQL: the worker's own database user with an IAM token; no secret, no password.
    assert "DATABASE_SECRET_ARN" not in env
    assert env["DATABASE_IAM_USER"] == '"offload_worker"'
    assert "DatabaseInstance" in env["DATABASE_HOST"] and "Proxy" not in env["DATABASE_HOST"]
    assert "UPLOAD_BUCKET" in env
    assert not any("PASSWORD" in name or "TOKEN" in name or "SECRET" in name for name in env)
    # The system jobs' own database user (fargate_worker.system_jobs), also by IAM.
    assert env["DATABASE_MAINTENANCE_IAM_USER"] == '"offload_maintenance"'
    assert sorted(name for name in env if "USER" in name) == [
        "DATABASE_IAM_USER",
        "DATABASE_MAINTENANCE_IAM_USER",
        "REDIS_USER",
    ]


def test_service_runs_in_private_subnets_with_capacity_providers(dev: Synth, prod: Synth) -> None:
    """prod: the private app subnets, out through NAT. dev (no NAT): the public subnets with
    a public IP each, and a security group that admits nothing inbound."""
    service = dev.one(dev.stacks.workers, "AWS::ECS::Service")
    # Omitted, so a deploy keeps the autoscaled count instead of resetting it.
    assert "DesiredCount" not in service
    network = service["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["AssignPublicIp"] == "ENABLED"
    assert all("PublicSubnet" in json.dumps(s) for s in network["Subnets"])
    assert "WorkersSecurityGroup" in json.dumps(network["SecurityGroups"])
    prod_service = prod.one(prod.stacks.workers, "AWS::ECS::Service")
    prod_network = prod_service["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert prod_network["AssignPublicIp"] == "DISABLED"
    assert all("AppSubnet" in json.dumps(s) for s in prod_network["Subnets"])
    for synth in (dev, prod):
        groups = synth.resources(synth.stacks.network, "AWS::EC2::SecurityGroup").values()
        [workers] = [
            g["Properties"]
            for g in groups
            if g["Properties"]["GroupDescription"] == "offload Fargate workers"
        ]
        assert "SecurityGroupIngress" not in workers
        for stack in synth.stacks.all():
            for rule in synth.resources(stack, "AWS::EC2::SecurityGroupIngress").values():
                assert "WorkersSecurityGroup" not in json.dumps(rule["Properties"]["GroupId"])
    providers = {s["CapacityProvider"] for s in service["CapacityProviderStrategy"]}
    assert providers == {"FARGATE_SPOT", "FARGATE"}
    prod_service = prod.one(prod.stacks.workers, "AWS::ECS::Service")
    assert {s["CapacityProvider"] for s in prod_service["CapacityProviderStrategy"]} == {"FARGATE"}
    # Container Insights: test_container_insights_per_environment_and_nothing_depends_on_it


def test_task_role_least_privilege(dev: Synth) -> None:
    stack = dev.stacks.workers
    task = dev.one(stack, "AWS::ECS::TaskDefinition")
    task_role_id = task["TaskRoleArn"]["Fn::GetAtt"][0]
    role = dev.json(stack)["Resources"][task_role_id]["Properties"]
    attached = json.dumps(role["ManagedPolicyArns"])
    assert "ReadUploadsPolicy" in attached and "WriteProcessedPolicy" in attached
    assert "ManageUploadsPolicy" not in attached
    policies = [
        p["Properties"]
        for p in dev.resources(stack, "AWS::IAM::Policy").values()
        if {"Ref": task_role_id} in p["Properties"]["Roles"]
    ]
    statements = [s for p in policies for s in p["PolicyDocument"]["Statement"]]
    by_actions = {
        tuple(sorted([s["Action"]] if isinstance(s["Action"], str) else s["Action"])): s
        for s in statements
    }
    assert set(by_actions) == {
        ("ecs:GetTaskProtection", "ecs:UpdateTaskProtection"),
        ("rds-db:connect",),
        ("elasticache:Connect",),  # as the worker user (test_stacks_queue.py)
        ("events:PutEvents",),  # an upload's final state, on the configured bus only
    }
    put_events = json.dumps(by_actions["events:PutEvents",]["Resource"])
    assert put_events.endswith(':event-bus/default"]]}') and "*" not in put_events
    env = {e["Name"]: e["Value"] for e in container(dev)["Environment"]}
    assert env["OFFLOAD_EVENT_BUS"] == "default"
    protection = by_actions["ecs:GetTaskProtection", "ecs:UpdateTaskProtection"]
    assert ":task/" in json.dumps(protection["Resource"])
    # No secret at all (ECS injects the Redis token with the execution role); PostgreSQL as
    # the worker's database user only, on the instance (not the proxy).
    # the worker's database user and the system jobs' (maintenance), on the instance only.
    connects = [
        json.dumps(resource)
        for s in statements
        if s["Action"] == "rds-db:connect"
        for resource in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])
    ]
    assert len(connects) == 2
    for connect in connects:
        assert ":dbuser:" in connect and "DbiResourceId" in connect and "*" not in connect
    assert sorted(c.rsplit("/", 1)[1] for c in connects) == [
        'offload_maintenance"]]}',
        'offload_worker"]]}',
    ]


def scaling(synth: Synth) -> tuple[dict, dict[str, dict], dict[str, dict]]:
    stack = synth.stacks.workers
    target = synth.one(stack, "AWS::ApplicationAutoScaling::ScalableTarget")
    policies = synth.resources(stack, "AWS::ApplicationAutoScaling::ScalingPolicy")
    alarms = synth.resources(stack, "AWS::CloudWatch::Alarm")
    return target, policies, alarms


def alarm_for(policy_id: str, alarms: dict[str, dict]) -> dict:
    [alarm] = [
        a for a in alarms.values() if a["Properties"]["AlarmActions"] == [{"Ref": policy_id}]
    ]
    return alarm["Properties"]


def test_scaling_allows_zero_tasks(dev: Synth, prod: Synth) -> None:
    for synth, maximum in ((dev, 3), (prod, 20)):
        target, _, _ = scaling(synth)
        assert (target["MinCapacity"], target["MaxCapacity"]) == (0, maximum)


def test_scales_out_in_steps_from_a_backlog_of_one(dev: Synth) -> None:
    _, policies, alarms = scaling(dev)
    [(policy_id, out)] = [(k, p) for k, p in policies.items() if "ScaleOut" in k]
    config = out["Properties"]["StepScalingPolicyConfiguration"]
    steps = config["StepAdjustments"]
    assert steps[0] == {
        "MetricIntervalLowerBound": 0,
        "MetricIntervalUpperBound": 3,
        "ScalingAdjustment": 1,
    }
    assert [s["ScalingAdjustment"] for s in steps] == [1, 2, 5]
    assert config["AdjustmentType"] == "ChangeInCapacity"
    alarm = alarm_for(policy_id, alarms)
    assert alarm["Threshold"] == 1
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["EvaluationPeriods"] == 1
    metrics = {m["Id"]: m for m in alarm["Metrics"]}
    waiting = metrics["waiting"]["MetricStat"]["Metric"]
    # the backlog of every queue that more tasks could run sooner (lambdas/queue_metrics.py)
    assert waiting["Namespace"] == "Offload" and waiting["MetricName"] == "Runnable"
    assert waiting["Dimensions"] == [{"Name": "Queue", "Value": "uploads"}]
    # With no task running, the expression is the waiting count itself: 1 job -> scale out.
    assert (
        metrics["expr_1"]["Expression"]
        == "IF(FILL(tasks, 0) > 1, waiting / FILL(tasks, 0), waiting)"
    )
    # the running tasks: the tasks' own count (fargate_worker/running_metric.py)
    tasks = metrics["tasks"]["MetricStat"]
    assert tasks["Metric"]["Namespace"] == "Offload"
    assert tasks["Metric"]["MetricName"] == "RunningTasks"
    assert tasks["Metric"]["Dimensions"] == [{"Name": "Queue", "Value": "uploads"}]
    assert (tasks["Stat"], tasks["Period"]) == ("Sum", 60)


def test_container_insights_per_environment_and_nothing_depends_on_it(
    dev: Synth, prod: Synth
) -> None:
    """workers.containerInsights: off in dev (its metrics are billed), on in prod; neither the
    scaling, the alarms nor the dashboard read it, so both shapes scale the same way."""
    for synth, setting in ((dev, "disabled"), (prod, "enabled")):
        cluster = synth.one(synth.stacks.workers, "AWS::ECS::Cluster")
        assert cluster["ClusterSettings"] == [{"Name": "containerInsights", "Value": setting}]
        for stack in (synth.stacks.workers, synth.stacks.observability):
            assert "ContainerInsights" not in json.dumps(synth.json(stack)["Resources"])


def test_scales_in_slowly_when_idle_and_never_on_cpu(dev: Synth) -> None:
    _, policies, alarms = scaling(dev)
    [(policy_id, scale_in)] = [(k, p) for k, p in policies.items() if "ScaleIn" in k]
    config = scale_in["Properties"]["StepScalingPolicyConfiguration"]
    assert config["StepAdjustments"] == [{"MetricIntervalUpperBound": 0, "ScalingAdjustment": -1}]
    assert config["Cooldown"] == 300
    alarm = alarm_for(policy_id, alarms)
    assert (alarm["Threshold"], alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (
        0,
        15,
        15,
    )
    assert alarm["ComparisonOperator"] == "LessThanOrEqualToThreshold"
    assert len(policies) == 2  # no target tracking on CPU or memory
    assert "CPUUtilization" not in json.dumps(alarms)


def test_every_component_gets_the_pipelines_settings(dev: Synth) -> None:
    """Producers, workers, the reconciler and the queue metrics must agree on the priority
    bands and the step limits (which queue a step's jobs are in): one cdk.json block, given to
    the worker container and to every Lambda that handles jobs (all but the migrations')."""
    bands = file_context()["offload:environments"]["dev"]["pipelines"]["prioritySizeBands"]
    env = {e["Name"]: e["Value"] for e in container(dev)["Environment"]}
    assert env["OFFLOAD_PRIORITY_SIZE_BANDS"] == bands
    assert "OFFLOAD_STEP_LIMITS" not in env  # none configured: every step in the main queue
    functions = [
        resource["Properties"]
        for stack in dev.assembly.stacks
        for resource in stack.template["Resources"].values()
        if resource["Type"] == "AWS::Lambda::Function"
        and str(resource["Properties"].get("Handler", "")).startswith("lambdas.")
        and resource["Properties"]["Handler"] != "lambdas.migrate.handler"  # touches no job
    ]
    handlers = {function["Handler"] for function in functions}
    expected = {"api", "enqueue", "reconciler", "queue_metrics"}
    assert {f"lambdas.{name}.handler" for name in expected} <= handlers, handlers
    for function in functions:
        variables = function["Environment"]["Variables"]
        assert variables.get("OFFLOAD_PRIORITY_SIZE_BANDS") == bands, function["Handler"]


def test_the_pipelines_block_becomes_the_runtime_settings() -> None:
    limits = {"thumbnail": {"maxConcurrent": 4}, "ocr": {"maxPerWindow": 10, "windowMs": 60000}}
    env = pipelines_env(PipelinesConfig(priority_size_bands="8MiB,1GiB", step_limits=limits))
    assert env["OFFLOAD_PRIORITY_SIZE_BANDS"] == "8MiB,1GiB"
    assert json.loads(env["OFFLOAD_STEP_LIMITS"]) == limits
    # what the runtime reads back from it (stacks import no runtime code; the test may)
    from offload.settings import Settings

    parsed = dict(Settings.from_env(env).step_limits)
    assert parsed["thumbnail"].max_concurrent == 4 and parsed["ocr"].window_ms == 60_000
    raw = file_context()["offload:environments"]["dev"]
    with pytest.raises(ConfigError, match=r"pipelines\.stepLimits\.ocr"):
        parse("dev", {**raw, "pipelines": {"prioritySizeBands": "none", "stepLimits": {"ocr": 5}}})
    with pytest.raises(ConfigError, match="missing"):
        parse("dev", {**raw, "pipelines": {"prioritySizeBands": "none"}})
