"""Auth, API Gateway and the Lambdas: authorizer on every route, throttling, access logs, CORS,
handlers, event source, schedules, reserved concurrency, least-privilege roles."""

from __future__ import annotations

import json
from typing import Any

from offload.caller import KNOWN_GROUPS
from stacks.api import ENQUEUE_TIMEOUT, ROUTES
from stacks.storage import EVENTS_VISIBILITY_TIMEOUT
from tests.infra.conftest import Synth


def test_user_pool_is_invite_only_with_strong_passwords(each_env: Synth) -> None:
    pool = each_env.one(each_env.stacks.auth, "AWS::Cognito::UserPool")
    assert pool["AdminCreateUserConfig"]["AllowAdminCreateUserOnly"] is True
    policy = pool["Policies"]["PasswordPolicy"]
    assert policy["MinimumLength"] >= 12
    assert all(
        policy[key]
        for key in ("RequireLowercase", "RequireUppercase", "RequireNumbers", "RequireSymbols")
    )
    assert pool["MfaConfiguration"] == "OPTIONAL"
    assert pool["EnabledMfas"] == ["SOFTWARE_TOKEN_MFA"]
    client = each_env.one(each_env.stacks.auth, "AWS::Cognito::UserPoolClient")
    assert client["GenerateSecret"] is False
    assert "ALLOW_USER_SRP_AUTH" in client["ExplicitAuthFlows"]
    # What the web page and the CLI use:
    assert "ALLOW_USER_PASSWORD_AUTH" in client["ExplicitAuthFlows"]
    assert client["PreventUserExistenceErrors"] == "ENABLED"
    # No OAuth flows, scopes, hosted UI or callback URLs: nothing we do not use.
    assert client.get("AllowedOAuthFlowsUserPoolClient") is False
    for unused in ("AllowedOAuthFlows", "AllowedOAuthScopes", "CallbackURLs", "LogoutURLs"):
        assert unused not in client, unused


def test_user_pool_has_the_groups_the_api_reads(each_env: Synth) -> None:
    """The quota tiers and the operators' group, each with a description and a precedence:
    the very names offload.caller reads from the token's cognito:groups claim."""
    groups = {
        props["GroupName"]: props
        for props in (
            resource["Properties"]
            for resource in each_env.resources(
                each_env.stacks.auth, "AWS::Cognito::UserPoolGroup"
            ).values()
        )
    }
    assert set(groups) == {"standard", "plus", "operators"} == set(KNOWN_GROUPS)
    for props in groups.values():
        assert props["Description"]
        assert isinstance(props["Precedence"], int)
        assert "UserPool" in json.dumps(props["UserPoolId"])
    assert len({props["Precedence"] for props in groups.values()}) == 3
    assert groups["plus"]["Precedence"] < groups["standard"]["Precedence"]


def test_threat_protection_in_prod(dev: Synth, prod: Synth) -> None:
    pool = prod.one(prod.stacks.auth, "AWS::Cognito::UserPool")
    assert pool["UserPoolTier"] == "PLUS"
    assert pool["UserPoolAddOns"]["AdvancedSecurityMode"] == "ENFORCED"
    assert pool["DeletionProtection"] == "ACTIVE"
    assert prod.stacks.auth.termination_protection is True
    assert dev.one(dev.stacks.auth, "AWS::Cognito::UserPool")["UserPoolTier"] == "ESSENTIALS"


def methods(synth: Synth) -> dict[str, dict[str, Any]]:
    return synth.resources(synth.stacks.api, "AWS::ApiGateway::Method")


def test_every_route_requires_the_cognito_authorizer(dev: Synth) -> None:
    authorizer = dev.one(dev.stacks.api, "AWS::ApiGateway::Authorizer")
    assert authorizer["Type"] == "COGNITO_USER_POOLS"
    assert "UserPool" in json.dumps(authorizer["ProviderARNs"])
    routed = 0
    for method in methods(dev).values():
        props = method["Properties"]
        if props["HttpMethod"] == "OPTIONS":
            assert props["AuthorizationType"] == "NONE"
            assert props["Integration"]["Type"] == "MOCK"
            continue
        routed += 1
        assert props["AuthorizationType"] == "COGNITO_USER_POOLS"
        assert "AuthorizerId" in props
        assert "RequestValidatorId" in props
        assert props["Integration"]["Type"] == "AWS_PROXY"
    assert routed == sum(len(m) for m in ROUTES.values())


def test_path_parameters_are_required(dev: Synth) -> None:
    with_params = [
        m["Properties"] for m in methods(dev).values() if m["Properties"].get("RequestParameters")
    ]
    assert len(with_params) == 6  # every route with an {id}
    for props in with_params:
        assert all(value is True for value in props["RequestParameters"].values())


def test_stage_throttling_access_logs_and_tracing(dev: Synth, prod: Synth) -> None:
    for synth, rate, burst in ((dev, 20, 40), (prod, 200, 400)):
        stage = synth.one(synth.stacks.api, "AWS::ApiGateway::Stage")
        [settings] = stage["MethodSettings"]
        assert (settings["ThrottlingRateLimit"], settings["ThrottlingBurstLimit"]) == (rate, burst)
        assert settings["LoggingLevel"] == "ERROR"
        assert settings["DataTraceEnabled"] is False
        assert "DestinationArn" in stage["AccessLogSetting"]
        assert '"status"' in stage["AccessLogSetting"]["Format"]
        assert stage["TracingEnabled"] is True


def test_cors_preflight_and_gateway_errors_carry_the_origin(dev: Synth) -> None:
    options = [m for m in methods(dev).values() if m["Properties"]["HttpMethod"] == "OPTIONS"]
    assert options
    headers = options[0]["Properties"]["Integration"]["IntegrationResponses"][0][
        "ResponseParameters"
    ]
    assert (
        headers["method.response.header.Access-Control-Allow-Origin"] == "'http://localhost:5173'"
    )
    responses = dev.resources(dev.stacks.api, "AWS::ApiGateway::GatewayResponse")
    assert {r["Properties"]["ResponseType"] for r in responses.values()} == {
        "DEFAULT_4XX",
        "DEFAULT_5XX",
    }


def functions(synth: Synth) -> dict[str, dict[str, Any]]:
    found = synth.resources(synth.stacks.api, "AWS::Lambda::Function")
    return {f["Properties"]["Handler"]: f["Properties"] for f in found.values()}


def test_four_python_functions_in_the_vpc(dev: Synth) -> None:
    by_handler = functions(dev)
    assert set(by_handler) == {
        "lambdas.api.handler",
        "lambdas.enqueue.handler",
        "lambdas.queue_metrics.handler",
        "lambdas.reconciler.handler",
    }
    for props in by_handler.values():
        assert props["Runtime"] == "python3.12"
        assert props["Architectures"] == ["x86_64"]
        assert "LambdasSecurityGroup" in json.dumps(props["VpcConfig"]["SecurityGroupIds"])
        assert all("AppSubnet" in json.dumps(s) for s in props["VpcConfig"]["SubnetIds"])
        assert props["TracingConfig"] == {"Mode": "Active"}
        env = props["Environment"]["Variables"]
        assert "REDIS_AUTH_SECRET_ARN" not in env and "REDIS_AUTH_TOKEN" not in env
        assert env["REDIS_USER"] == "offload-dev-producer"
        assert "ReplicationGroup" in json.dumps(env["REDIS_IAM_AUTH_CACHE"])
        assert env["OFFLOAD_QUEUE_NAME"] == "uploads"
    api_env = by_handler["lambdas.api.handler"]["Environment"]["Variables"]
    assert {"DATABASE_HOST", "DATABASE_IAM_USER", "UPLOAD_BUCKET"} <= set(api_env)
    assert api_env["OFFLOAD_CORS_ORIGIN"] == "http://localhost:5173"
    # the lifecycle rule's age, so the API stops linking to archived outputs
    assert api_env["OFFLOAD_PROCESSED_ARCHIVE_AFTER_DAYS"] == "90"
    # the lifecycle rule's age, so an unfinished multipart upload stops counting against
    # its owner's quota when the rule aborts it (dev: 1 day)
    assert api_env["OFFLOAD_MULTIPART_ABORT_AFTER_DAYS"] == "1"


def test_enqueue_event_source_batches_with_partial_failures(dev: Synth, prod: Synth) -> None:
    for synth, reserved in ((dev, 2), (prod, 10)):
        mapping = synth.one(synth.stacks.api, "AWS::Lambda::EventSourceMapping")
        assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert mapping["BatchSize"] == 10
        assert mapping["ScalingConfig"]["MaximumConcurrency"] == max(2, reserved)
        assert "UploadEvents" in json.dumps(mapping["EventSourceArn"])
        enqueue = functions(synth)["lambdas.enqueue.handler"]
        assert enqueue["ReservedConcurrentExecutions"] == reserved
        assert enqueue["Timeout"] * 6 <= EVENTS_VISIBILITY_TIMEOUT.to_seconds()
    assert ENQUEUE_TIMEOUT.to_seconds() == functions(dev)["lambdas.enqueue.handler"]["Timeout"]


def test_schedules_every_minute_and_every_five_minutes(dev: Synth) -> None:
    rules = dev.resources(dev.stacks.api, "AWS::Events::Rule")
    schedules = {}
    for rule in rules.values():
        [target] = rule["Properties"]["Targets"]
        schedules[json.dumps(target["Arn"])] = rule["Properties"]["ScheduleExpression"]
    by_function = {
        ("QueueMetrics" in k and "metrics") or "reconciler": v for k, v in schedules.items()
    }
    assert by_function == {"metrics": "rate(1 minute)", "reconciler": "rate(5 minutes)"}


def role_statements(synth: Synth, handler: str) -> tuple[list[dict], str]:
    """(inline statements, attached managed policies as text) of a function's role."""
    stack = synth.stacks.api
    resources = synth.json(stack)["Resources"]
    props = functions(synth)[handler]
    role_id = props["Role"]["Fn::GetAtt"][0]
    statements = [
        s
        for p in synth.resources(stack, "AWS::IAM::Policy").values()
        if {"Ref": role_id} in p["Properties"]["Roles"]
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]
    return statements, json.dumps(resources[role_id]["Properties"]["ManagedPolicyArns"])


def actions(statements: list[dict]) -> set[str]:
    found: set[str] = set()
    for statement in statements:
        value = statement["Action"]
        found.update([value] if isinstance(value, str) else value)
    return found


DATABASE_USERS = {
    "lambdas.api.handler": "offload_api",
    "lambdas.enqueue.handler": "offload_enqueue",
    "lambdas.reconciler.handler": "offload_reconciler",
}


def test_each_database_function_logs_in_as_its_own_user(each_env: Synth) -> None:
    """No runtime function holds the master secret: each signs an IAM token for its own
    database user (offload.db.roles), and may connect as that user only: on the proxy in
    prod, on the instance in dev (database.proxy: false)."""
    synth = each_env
    proxy = synth.env == "prod"
    functions = synth.resources(synth.stacks.api, "AWS::Lambda::Function").values()
    by_handler = {f["Properties"]["Handler"]: f["Properties"] for f in functions}
    for handler, props in by_handler.items():
        env = props["Environment"]["Variables"]
        assert "DATABASE_SECRET_ARN" not in env and "DATABASE_PASSWORD" not in env, handler
        if handler not in DATABASE_USERS:
            assert not any(name.startswith("DATABASE_") for name in env), handler
            continue
        assert env["DATABASE_IAM_USER"] == DATABASE_USERS[handler]
        assert ("Proxy" in json.dumps(env["DATABASE_HOST"])) is proxy
        # behind the proxy the schema comes from the role; directly, from the startup option
        assert env.get("OFFLOAD_DB_SCHEMA_FROM_ROLE") == ("true" if proxy else None)
        statements, _ = role_statements(synth, handler)
        [connect] = [s for s in statements if "rds-db:connect" in json.dumps(s["Action"])]
        assert connect["Action"] == "rds-db:connect"
        resource = json.dumps(connect["Resource"])
        assert ":dbuser:" in resource and ("Proxy" in resource) is proxy
        assert ("DbiResourceId" in resource) is not proxy
        assert resource.endswith(f'"/{DATABASE_USERS[handler]}"]]}}') and "*" not in resource
    # nothing in the stack may read the database secret
    policies = synth.resources(synth.stacks.api, "AWS::IAM::Policy").values()
    assert "DatabaseInstanceSecret" not in json.dumps(list(policies))


def test_without_rds_proxy_every_database_function_has_a_reserved_concurrency(
    dev: Synth, prod: Synth
) -> None:
    """Each container holds one PostgreSQL connection: without the proxy the reservations are
    what caps them (test_connection_budget.py adds them up)."""
    reserved = {
        handler: props.get("ReservedConcurrentExecutions")
        for handler, props in functions(dev).items()
    }
    assert reserved == {
        "lambdas.api.handler": 10,
        "lambdas.enqueue.handler": 2,
        "lambdas.queue_metrics.handler": 1,
        "lambdas.reconciler.handler": 1,
    }
    behind_proxy = {
        handler: props.get("ReservedConcurrentExecutions")
        for handler, props in functions(prod).items()
    }
    assert behind_proxy["lambdas.api.handler"] is None
    assert behind_proxy["lambdas.enqueue.handler"] == 10


def test_each_function_has_only_the_permissions_it_uses(dev: Synth) -> None:
    xray = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
    connect = {"rds-db:connect"}  # as its own database user (test_stacks_database.py)
    redis = {"elasticache:Connect"}  # as the producer user (test_stacks_queue.py)

    # No secret at all: IAM logins to PostgreSQL and Redis (only the migrations read one).
    statements, managed = role_statements(dev, "lambdas.api.handler")
    assert actions(statements) == xray | connect | redis
    assert "ManageUploadsPolicy" in managed and "ReadUploadsPolicy" not in managed
    # result links are presigned GETs of processed/*: the signer needs s3:GetObject there
    assert "ReadProcessedPolicy" in managed and "Write" not in managed

    statements, managed = role_statements(dev, "lambdas.enqueue.handler")
    sqs = {a for a in actions(statements) if a.startswith("sqs:")}
    assert sqs == {
        "sqs:ReceiveMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueUrl",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
    }
    assert actions(statements) - sqs == xray | connect | redis
    assert "ReadUploadsPolicy" in managed and "Manage" not in managed and "Write" not in managed

    # dev has no route to CloudWatch's API (no NAT): EMF on stdout, no PutMetricData
    statements, managed = role_statements(dev, "lambdas.queue_metrics.handler")
    assert actions(statements) == xray | redis  # no secret
    assert (
        functions(dev)["lambdas.queue_metrics.handler"]["Environment"]["Variables"][
            "OFFLOAD_METRICS_EMF"
        ]
        == "true"
    )
    assert "Uploads" not in managed

    statements, managed = role_statements(dev, "lambdas.reconciler.handler")
    assert actions(statements) == xray | connect | redis
    # HEADs uploaded originals whose event was lost and aborts expired multipart uploads
    # (AbortUploadsPolicy, scoped in test_stacks_storage); never writes, never reads outputs
    assert "ReadUploadsPolicy" in managed and "AbortUploadsPolicy" in managed
    assert "Manage" not in managed
    assert "Write" not in managed and "Processed" not in managed


def test_queue_metrics_by_put_metric_data_where_there_is_a_route(prod: Synth) -> None:
    """prod has NAT gateways and a CloudWatch endpoint: PutMetricData in its namespace only."""
    xray = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
    statements, _ = role_statements(prod, "lambdas.queue_metrics.handler")
    assert actions(statements) == xray | {"elasticache:Connect", "cloudwatch:PutMetricData"}
    [put] = [s for s in statements if s["Action"] == "cloudwatch:PutMetricData"]
    assert put["Condition"] == {"StringEquals": {"cloudwatch:namespace": "Offload"}}
    env = functions(prod)["lambdas.queue_metrics.handler"]["Environment"]["Variables"]
    assert "OFFLOAD_METRICS_EMF" not in env


def test_no_wildcard_actions_anywhere(each_env: Synth) -> None:
    for stack in each_env.stacks.all():
        for type_ in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            for policy in each_env.resources(stack, type_).values():
                for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
                    value = statement["Action"]
                    for action in [value] if isinstance(value, str) else value:
                        assert action != "*" and not action.endswith(":*"), (
                            stack.stack_name,
                            action,
                        )
