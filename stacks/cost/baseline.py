"""The idle monthly bill: one line per billable resource type the templates declare.

"Idle" is the environment deployed and nobody uploading: every hourly resource, the minimum
worker tasks, and what runs on a schedule whatever the traffic (the queue-metrics and
reconciler Lambdas, the event source mapping's long polls). Everything billed per use is
:mod:`stacks.cost.usage`'s. Every resource type must be priced here, listed as free
(:data:`FREE`) or as billed by use only (:data:`BY_USE`): :func:`unpriced` names the others,
and the tests require it to find none in the real templates.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

from stacks.cost.model import Line
from stacks.cost.prices import Prices
from stacks.cost.templates import Templates, ref_id, strings

# A scheduled function's run, assumed: the queue-metrics and reconciler Lambdas answer in well
# under a second when idle (a few Redis and PostgreSQL round trips).
SCHEDULED_RUN_SECONDS = 1.0
# Lambda polls an SQS queue with at least five long polls (20 s) at once, even when idle.
SQS_IDLE_POLLERS = 5
SQS_LONG_POLL_SECONDS = 20
AWS_NAMESPACE = re.compile(r"^AWS/")
CONTAINER_INSIGHTS_NAMESPACE = "ECS/ContainerInsights"

# Resource types with no charge of their own.
FREE = frozenset(
    {
        "AWS::ApiGateway::Account",
        "AWS::ApiGateway::Authorizer",
        "AWS::ApiGateway::Deployment",
        "AWS::ApiGateway::GatewayResponse",
        "AWS::ApiGateway::Method",
        "AWS::ApiGateway::RequestValidator",
        "AWS::ApiGateway::Resource",
        "AWS::ApplicationAutoScaling::ScalableTarget",
        "AWS::ApplicationAutoScaling::ScalingPolicy",
        "AWS::Cognito::UserPoolClient",
        "AWS::Cognito::UserPoolGroup",
        "AWS::EC2::InternetGateway",
        "AWS::EC2::Route",
        "AWS::EC2::RouteTable",
        "AWS::EC2::SecurityGroup",
        "AWS::EC2::SecurityGroupEgress",
        "AWS::EC2::SecurityGroupIngress",
        "AWS::EC2::Subnet",
        "AWS::EC2::SubnetRouteTableAssociation",
        "AWS::EC2::VPC",
        "AWS::EC2::VPCGatewayAttachment",
        "AWS::ECS::ClusterCapacityProviderAssociations",
        "AWS::ECS::TaskDefinition",
        "AWS::ElastiCache::ParameterGroup",
        "AWS::ElastiCache::SubnetGroup",
        "AWS::ElastiCache::User",
        "AWS::ElastiCache::UserGroup",
        "AWS::IAM::ManagedPolicy",
        "AWS::IAM::Policy",
        "AWS::IAM::Role",
        "AWS::Lambda::Permission",
        "AWS::RDS::DBParameterGroup",
        "AWS::RDS::DBProxyTargetGroup",
        "AWS::RDS::DBSubnetGroup",
        "AWS::S3::BucketPolicy",
        "AWS::SNS::TopicPolicy",
        "AWS::SNS::Subscription",
        "AWS::SQS::QueuePolicy",
        "AWS::SecretsManager::ResourcePolicy",
        "AWS::SecretsManager::RotationSchedule",
        "AWS::SecretsManager::SecretTargetAttachment",
        "AWS::Serverless::Application",  # the rotation function's stack: a Lambda, by use
        "Custom::OffloadSchemaMigrations",
        "Custom::S3BucketNotifications",
    }
)
# Resource types billed by use only (requests, GB, monthly active users, log bytes).
BY_USE = frozenset(
    {
        "AWS::ApiGateway::RestApi",
        "AWS::ApiGateway::Stage",
        "AWS::Cognito::UserPool",
        "AWS::EC2::FlowLog",
        "AWS::ECS::Service",  # its minimum tasks are priced below; the rest by use
        "AWS::Lambda::Function",
        "AWS::Logs::LogGroup",
        "AWS::S3::Bucket",
        "AWS::SNS::Topic",
        "AWS::SQS::Queue",
    }
)


def _nat_gateways(t: Templates, p: Prices) -> Iterator[Line]:
    count = sum(1 for _ in t.resources("AWS::EC2::NatGateway"))
    if count:
        yield Line(
            item="NAT gateway",
            count=count,
            unit_price=p.price("vpc", "natGatewayHour"),
            quantity=p.hours,
            unit="h",
            switch="network.natGateways",
            saving=(count - 1)
            * (p.price("vpc", "natGatewayHour") + p.price("vpc", "publicIpv4Hour"))
            * p.hours,
            saving_what=f"one NAT gateway instead of {count}" if count > 1 else "",
        )


def _public_ipv4(t: Templates, p: Prices) -> Iterator[Line]:
    count = sum(1 for _ in t.resources("AWS::EC2::EIP"))
    if count:
        yield Line(
            item="public IPv4 address (Elastic IP)",
            count=count,
            unit_price=p.price("vpc", "publicIpv4Hour"),
            quantity=p.hours,
            unit="h",
            switch="network.natGateways",
        )


def _interface_endpoints(t: Templates, p: Prices) -> Iterator[Line]:
    endpoints = [
        r
        for r in t.resources("AWS::EC2::VPCEndpoint")
        if r.properties.get("VpcEndpointType") == "Interface"
    ]
    azs = sum(len(r.properties.get("SubnetIds", [])) for r in endpoints)
    if endpoints:
        line = Line(
            item=f"interface VPC endpoint ({len(endpoints)} services, per AZ)",
            count=azs,
            unit_price=p.price("vpc", "interfaceEndpointAzHour"),
            quantity=p.hours,
            unit="h",
            switch="network.interfaceEndpoints",
        )
        # Without NAT gateways the endpoints are the only way to their services: no saving.
        if any(True for _ in t.resources("AWS::EC2::NatGateway")):
            line = _with_saving(line, line.monthly, "no interface endpoints")
        yield line


def _rds(t: Templates, p: Prices) -> Iterator[Line]:
    for r in t.resources("AWS::RDS::DBInstance"):
        klass = str(r.properties["DBInstanceClass"])
        multi = bool(r.properties.get("MultiAZ", False))
        factor = p.price("rds", "multiAzFactor") if multi else 1.0
        hourly = p.price("rds", "postgresInstanceHour", klass) * factor
        instance = Line(
            item=f"RDS PostgreSQL {klass} {'Multi-AZ' if multi else 'single-AZ'}",
            count=1,
            unit_price=hourly,
            quantity=p.hours,
            unit="h",
            switch="database.instanceType, database.multiAz",
        )
        storage_gb = float(r.properties.get("AllocatedStorage", 20))
        storage = Line(
            item=f"RDS gp3 storage{' (Multi-AZ: twice)' if multi else ''}",
            count=storage_gb,
            unit_price=p.price("rds", "gp3GbMonth") * factor,
            quantity=1,
            unit="GB-month",
            switch="database.allocatedStorageGib",
        )
        if multi:
            instance = _with_saving(
                instance, instance.monthly * (1 - 1 / factor), "single-AZ PostgreSQL"
            )
            storage = _with_saving(
                storage, storage.monthly * (1 - 1 / factor), "single-AZ PostgreSQL"
            )
        yield instance
        yield storage


def _rds_proxy(t: Templates, p: Prices) -> Iterator[Line]:
    for proxy in t.resources("AWS::RDS::DBProxy"):
        vcpus = 0
        for group in t.resources("AWS::RDS::DBProxyTargetGroup"):
            if (
                group.stack != proxy.stack
                or ref_id(group.properties.get("DBProxyName")) != proxy.logical_id
            ):
                continue
            for target in group.properties.get("DBInstanceIdentifiers", []):
                instance = t.get(group.stack, ref_id(target) or "")
                if instance is not None:
                    klass = str(instance.properties["DBInstanceClass"])
                    vcpus += int(p.get("rds", "instanceVcpus", klass))
        vcpus = max(vcpus, int(p.get("rds", "proxyMinimumVcpus")))
        line = Line(
            item="RDS Proxy (per vCPU of its instance)",
            count=vcpus,
            unit_price=p.price("rds", "proxyVcpuHour"),
            quantity=p.hours,
            unit="vCPU-h",
            switch="database.proxy",
        )
        yield _with_saving(line, line.monthly, "no RDS Proxy (Lambdas straight to the instance)")


def redis_nodes(properties: dict[str, Any]) -> int:
    if "NumNodeGroups" in properties:
        return int(properties["NumNodeGroups"]) * (
            int(properties.get("ReplicasPerNodeGroup", 0)) + 1
        )
    return int(properties.get("NumCacheClusters", 1))


def _elasticache(t: Templates, p: Prices) -> Iterator[Line]:
    for r in t.resources("AWS::ElastiCache::ReplicationGroup"):
        node_type = str(r.properties["CacheNodeType"])
        nodes = redis_nodes(r.properties)
        line = Line(
            item=f"ElastiCache {node_type}",
            count=nodes,
            unit_price=p.price("elasticache", "nodeHour", node_type),
            quantity=p.hours,
            unit="node-h",
            switch="redis.nodeType, redis.nodes",
        )
        if nodes > 1:
            line = _with_saving(
                line, line.monthly * (nodes - 1) / nodes, "one Redis node (no replica, no failover)"
            )
        yield line


def _fargate_minimum(t: Templates, p: Prices) -> Iterator[Line]:
    for service in t.resources("AWS::ECS::Service"):
        minimum = 0
        for target in t.resources("AWS::ApplicationAutoScaling::ScalableTarget"):
            if target.stack == service.stack and service.logical_id in json.dumps(
                target.properties["ResourceId"]
            ):
                minimum = int(target.properties["MinCapacity"])
        task = t.get(service.stack, ref_id(service.properties.get("TaskDefinition")) or "")
        if task is None:
            continue
        vcpu = int(task.properties["Cpu"]) / 1024
        gb = int(task.properties["Memory"]) / 1024
        spot = spot_share(service.properties)
        vcpu_price = (1 - spot) * p.price("fargate", "vcpuHour") + spot * p.price(
            "fargate", "spotVcpuHour"
        )
        gb_price = (1 - spot) * p.price("fargate", "gbHour") + spot * p.price(
            "fargate", "spotGbHour"
        )
        mix = f"{spot:.0%} Spot" if spot else "on demand"
        yield Line(
            item=f"Fargate vCPU, minimum {minimum} tasks x {vcpu:g} vCPU ({mix})",
            count=minimum * vcpu,
            unit_price=vcpu_price,
            quantity=p.hours,
            unit="vCPU-h",
            switch="workers.minTasks, workers.cpu",
        )
        yield Line(
            item=f"Fargate memory, minimum {minimum} tasks x {gb:g} GB",
            count=minimum * gb,
            unit_price=gb_price,
            quantity=p.hours,
            unit="GB-h",
            switch="workers.minTasks, workers.memoryMib",
        )
        if public_ip(service.properties):
            yield Line(
                item="public IPv4 address (one per running worker task)",
                count=minimum,
                unit_price=p.price("vpc", "publicIpv4Hour"),
                quantity=p.hours,
                unit="h",
                switch="stacks/workers.py assign_public_ip",
            )


def spot_share(service: dict[str, Any]) -> float:
    """The Spot fraction of a service's tasks, from its capacity provider weights."""
    strategy = service.get("CapacityProviderStrategy") or []
    weights = {item["CapacityProvider"]: float(item.get("Weight", 0)) for item in strategy}
    whole = sum(weights.values())
    return weights.get("FARGATE_SPOT", 0.0) / whole if whole else 0.0


def public_ip(service: dict[str, Any]) -> bool:
    vpc = service.get("NetworkConfiguration", {}).get("AwsvpcConfiguration", {})
    return vpc.get("AssignPublicIp") == "ENABLED"


def _container_insights(t: Templates, p: Prices) -> Iterator[Line]:
    for cluster in t.resources("AWS::ECS::Cluster"):
        settings = {s["Name"]: s["Value"] for s in cluster.properties.get("ClusterSettings", [])}
        if settings.get("containerInsights", "disabled") == "disabled":
            continue
        services = sum(1 for s in t.resources("AWS::ECS::Service") if s.stack == cluster.stack)
        per_service = int(p.get("cloudwatch", "containerInsightsMetricsPerService"))
        line = Line(
            item=f"Container Insights metrics ({services} service(s))",
            count=services * per_service,
            unit_price=p.price("cloudwatch", "customMetricMonth"),
            quantity=1,
            unit="metric-month",
            switch="workers.containerInsights",
        )
        yield _with_saving(line, line.monthly, "no Container Insights")


def _load_balancers(t: Templates, p: Prices) -> Iterator[Line]:
    count = sum(
        1
        for r in t.resources("AWS::ElasticLoadBalancingV2::LoadBalancer")
        if r.properties.get("Type", "application") == "application"
    )
    if count:
        yield Line(
            item="Application Load Balancer (+ 1 LCU)",
            count=count,
            unit_price=p.price("elb", "albHour") + p.price("elb", "lcuHour"),
            quantity=p.hours,
            unit="h",
        )


def alarm_metrics(properties: dict[str, Any]) -> int:
    """CloudWatch bills an alarm per metric it reads (a metric-math alarm: each of its
    metrics), expressions themselves free."""
    if "Metrics" in properties:
        return sum(1 for m in properties["Metrics"] if "MetricStat" in m)
    return 1


def _alarms(t: Templates, p: Prices) -> Iterator[Line]:
    alarms = list(t.resources("AWS::CloudWatch::Alarm"))
    if alarms:
        yield Line(
            item=f"CloudWatch alarm metrics ({len(alarms)} alarms)",
            count=sum(alarm_metrics(a.properties) for a in alarms),
            unit_price=p.price("cloudwatch", "alarmMetricMonth"),
            quantity=1,
            unit="metric-month",
        )


_DASHBOARD_METRIC = re.compile(r'\["([^"\[\]]+)","([^"\[\]]+)"')


# What the runtime publishes whatever reads it (restated: this tool imports no runtime code):
# the queue-metrics Lambda's metrics for the main queue (lambdas/queue_metrics.py) and the
# workers' EMF metrics (fargate_worker/worker.py, fargate_worker/running_metric.py).
PUBLISHED_BY_HANDLER = {
    "lambdas.queue_metrics.handler": (
        "Waiting",
        "Active",
        "Delayed",
        "Failed",
        "OldestWaitingAge",
        "Runnable",
    ),
}
PUBLISHED_BY_WORKERS = ("JobsCompleted", "JobsFailed", "JobDuration", "QueueWait", "RunningTasks")


def _namespace(environment: dict[str, Any]) -> str:
    return str(environment.get("OFFLOAD_METRICS_NAMESPACE", "Offload"))


def custom_metrics(t: Templates) -> set[tuple[str, str]]:
    """The custom metrics (namespace, name) the runtime publishes for the main queue, and
    those the alarms and dashboards read: each is billed once published, read or not. A lower
    bound: each step queue's metrics (another ``Queue`` dimension) are metrics of their own."""
    found: set[tuple[str, str]] = set()
    for function in t.resources("AWS::Lambda::Function"):
        env = function.properties.get("Environment", {}).get("Variables", {})
        for name in PUBLISHED_BY_HANDLER.get(str(function.properties.get("Handler")), ()):
            found.add((_namespace(env), name))
    for task in t.resources("AWS::ECS::TaskDefinition"):
        for container in task.properties.get("ContainerDefinitions", []):
            env = {e["Name"]: e["Value"] for e in container.get("Environment", [])}
            if "OFFLOAD_CONCURRENCY" in env:  # an offload worker
                found |= {(_namespace(env), name) for name in PUBLISHED_BY_WORKERS}

    def keep(namespace: str, name: str) -> None:
        if not AWS_NAMESPACE.match(namespace) and namespace != CONTAINER_INSIGHTS_NAMESPACE:
            found.add((namespace, name))

    for alarm in t.resources("AWS::CloudWatch::Alarm"):
        if "Namespace" in alarm.properties:
            keep(alarm.properties["Namespace"], alarm.properties["MetricName"])
        for metric in alarm.properties.get("Metrics", []):
            if "MetricStat" in metric:
                inner = metric["MetricStat"]["Metric"]
                keep(inner["Namespace"], inner["MetricName"])
    for dashboard in t.resources("AWS::CloudWatch::Dashboard"):
        body = "".join(strings(dashboard.properties.get("DashboardBody")))
        for namespace, name in _DASHBOARD_METRIC.findall(body):
            if "/" in namespace or namespace[:1].isupper():
                keep(namespace, name)
    return found


def _custom_metrics(t: Templates, p: Prices) -> Iterator[Line]:
    metrics = custom_metrics(t)
    if metrics:
        namespaces = ", ".join(sorted({ns for ns, _ in metrics}))
        yield Line(
            item=f"custom metrics, main queue ({namespaces})",
            count=len(metrics),
            unit_price=p.price("cloudwatch", "customMetricMonth"),
            quantity=1,
            unit="metric-month",
        )


_RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
_MINUTES = {"minute": 1, "hour": 60, "day": 1440}


def runs_per_month(expression: str, hours: float) -> float:
    match = _RATE.match(expression)
    if not match:
        raise ValueError(f"schedule {expression!r}: only rate(...) expressions are priced")
    every = int(match.group(1)) * _MINUTES[match.group(2).rstrip("s")]
    return hours * 60 / every


def _scheduled_functions(t: Templates, p: Prices) -> Iterator[Line]:
    runs = 0.0
    gb_seconds = 0.0
    names = []
    for rule in t.resources("AWS::Events::Rule"):
        expression = rule.properties.get("ScheduleExpression")
        if not expression:
            continue
        for target in rule.properties.get("Targets", []):
            function = t.get(rule.stack, ref_id(target.get("Arn")) or "")
            if function is None or function.type != "AWS::Lambda::Function":
                continue
            n = runs_per_month(expression, p.hours)
            runs += n
            gb_seconds += (
                n * SCHEDULED_RUN_SECONDS * int(function.properties.get("MemorySize", 128)) / 1024
            )
            names.append(expression)
    if runs:
        yield Line(
            item=f"Lambda requests on schedules ({', '.join(sorted(names))})",
            count=runs / 1e6,
            unit_price=p.price("lambda", "perMillionRequests"),
            quantity=1,
            unit="M requests",
        )
        yield Line(
            item=f"Lambda compute on schedules ({SCHEDULED_RUN_SECONDS:g} s a run assumed)",
            count=gb_seconds,
            unit_price=p.price("lambda", "gbSecond"),
            quantity=1,
            unit="GB-s",
        )


def _sqs_polling(t: Templates, p: Prices) -> Iterator[Line]:
    mappings = list(t.resources("AWS::Lambda::EventSourceMapping"))
    if mappings:
        polls = len(mappings) * SQS_IDLE_POLLERS * p.hours * 3600 / SQS_LONG_POLL_SECONDS
        yield Line(
            item=f"SQS long polls by Lambda ({SQS_IDLE_POLLERS} pollers x "
            f"{len(mappings)} mapping(s))",
            count=polls / 1e6,
            unit_price=p.price("sqs", "perMillionRequests"),
            quantity=1,
            unit="M requests",
        )


def _per_resource_month(
    resource_type: str, item: str, service: str, price: str
) -> Callable[[Templates, Prices], Iterator[Line]]:
    """A rule for a resource billed a flat price per month each (a dashboard, a secret, a
    KMS key): one line with their count."""

    def rule(t: Templates, p: Prices) -> Iterator[Line]:
        count = sum(1 for _ in t.resources(resource_type))
        if count:
            yield Line(
                item=item,
                count=count,
                unit_price=p.price(service, price),
                quantity=1,
                unit="month",
            )

    return rule


_dashboards = _per_resource_month(
    "AWS::CloudWatch::Dashboard", "CloudWatch dashboard", "cloudwatch", "dashboardMonth"
)
_secrets = _per_resource_month(
    "AWS::SecretsManager::Secret", "Secrets Manager secret", "secretsmanager", "secretMonth"
)
_kms = _per_resource_month("AWS::KMS::Key", "KMS key", "kms", "keyMonth")


def _with_saving(line: Line, saving: float, what: str) -> Line:
    return Line(**{**line.__dict__, "saving": saving, "saving_what": what})


RULES: tuple[Callable[[Templates, Prices], Iterator[Line]], ...] = (
    _nat_gateways,
    _public_ipv4,
    _interface_endpoints,
    _rds,
    _rds_proxy,
    _elasticache,
    _fargate_minimum,
    _container_insights,
    _load_balancers,
    _alarms,
    _dashboards,
    _custom_metrics,
    _secrets,
    _kms,
    _scheduled_functions,
    _sqs_polling,
)
PRICED = frozenset(
    {
        "AWS::EC2::NatGateway",
        "AWS::EC2::EIP",
        "AWS::EC2::VPCEndpoint",
        "AWS::RDS::DBInstance",
        "AWS::RDS::DBProxy",
        "AWS::ElastiCache::ReplicationGroup",
        "AWS::ECS::Cluster",
        "AWS::ElasticLoadBalancingV2::LoadBalancer",
        "AWS::CloudWatch::Alarm",
        "AWS::CloudWatch::Dashboard",
        "AWS::SecretsManager::Secret",
        "AWS::KMS::Key",
        "AWS::Events::Rule",
        "AWS::Lambda::EventSourceMapping",
    }
)


def baseline(t: Templates, p: Prices) -> list[Line]:
    return [line for rule in RULES for line in rule(t, p)]


def unpriced(t: Templates) -> list[str]:
    """Resource types this module neither prices nor knows to be free or billed by use."""
    return sorted(t.types() - PRICED - FREE - BY_USE)
