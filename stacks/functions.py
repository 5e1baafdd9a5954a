"""The one way this app makes a Python Lambda function: the shared code asset, Python 3.12 on
x86_64 (what the bundle is built for), in the VPC's app subnets with a security group, X-Ray
tracing, and its own log group with a retention."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from stacks.bundling import ARCHITECTURE, RUNTIME
from stacks.nag import acknowledge

BASIC_EXECUTION_POLICY = (
    "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
)
VPC_EXECUTION_POLICY = (
    "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
)


def python_function(
    scope: Construct,
    id: str,
    *,
    code: lambda_.Code,
    handler: str,
    description: str,
    vpc: ec2.IVpc,
    subnets: ec2.SubnetSelection,
    security_group: ec2.ISecurityGroup,
    environment: dict[str, str],
    log_retention: logs.RetentionDays,
    timeout: Duration,
    memory_size: int = 512,
    reserved_concurrent_executions: int | None = None,
) -> lambda_.Function:
    log_group = logs.LogGroup(
        scope, f"{id}Logs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
    )
    function = lambda_.Function(
        scope,
        id,
        runtime=RUNTIME,
        architecture=ARCHITECTURE,
        code=code,
        handler=handler,
        description=description,
        timeout=timeout,
        memory_size=memory_size,
        vpc=vpc,
        vpc_subnets=subnets,
        security_groups=[security_group],
        environment=environment,
        log_group=log_group,
        tracing=lambda_.Tracing.ACTIVE,
        reserved_concurrent_executions=reserved_concurrent_executions,
    )
    acknowledge(
        function,
        f"AwsSolutions-IAM4[{VPC_EXECUTION_POLICY}]",
        "AWS managed policy for VPC functions: only ENI management (which needs Resource *) "
        "and writing the function's own logs.",
    )
    acknowledge(
        function,
        f"AwsSolutions-IAM4[{BASIC_EXECUTION_POLICY}]",
        "AWS managed policy that only lets the function write its own logs.",
    )
    acknowledge(
        function,
        "AwsSolutions-IAM5[Resource::*]",
        "X-Ray PutTraceSegments/PutTelemetryRecords take no resource ARN (CDK's tracing grant).",
    )
    acknowledge(
        function,
        "AwsSolutions-L1",
        "Python 3.12 on purpose: the design pins 3.12 for Lambda and the worker image, and the "
        "bundle's binary wheels are built for cp312.",
    )
    return function


def arn_ref(function: lambda_.IFunction) -> str:
    """How cdk-nag names a function's ARN in a finding: ``<LogicalId.Arn>``."""
    stack = Stack.of(function)
    cfn = function.node.default_child
    return f"<{stack.resolve(cfn.logical_id)}.Arn>"  # type: ignore[union-attr]
