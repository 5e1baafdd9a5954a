"""The upload/status API and the Lambdas around the queue.

- API Gateway REST API, every route behind the Cognito authorizer (only CORS preflights are
  open), a request validator, stage throttling, JSON access logs, X-Ray, CORS for the web
  origins (also on gateway errors, so a browser can read a 401).
- Lambdas (one shared code asset, ``lambdas.<module>.handler``), in the VPC's app subnets with
  the Lambdas' security group, each with only the permissions it uses:
  - ``api``: presign and manage uploads under ``uploads/*``; the Redis secret.
  - ``enqueue``: the S3 event queue as event source (batch size, partial batch failures),
    reserved concurrency so a burst of uploads cannot flood Redis with connections; reads
    ``uploads/*`` objects' metadata; the Redis secret.
  - ``queue_metrics``: every minute, publishes the queue counts (``Offload`` namespace) that
    the workers scale on; Redis secret.
  - ``reconciler``: every 5 minutes, re-enqueues uploads whose job went missing (from
    PostgreSQL), and takes the objects of uploads whose S3 event was lost (reads ``uploads/*``
    objects' metadata); the Redis secret.

Each function that uses PostgreSQL logs in through RDS Proxy (or, where the environment has
none, to the instance, with reserved concurrency capping its connections) as its own database user
(``offload_api``, ``offload_enqueue``, ``offload_reconciler``: ``offload.db.roles``) with an
IAM token, and may ``rds-db:connect`` as that user only; none can read the master secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aws_cdk import CfnOutput, Duration, RemovalPolicy
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cognito as cognito
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_logs as logs
from constructs import Construct

from stacks.base import OffloadStack
from stacks.bundling import lambda_code
from stacks.config import ApiConfig, EnvConfig, PipelinesConfig, skip_bundling
from stacks.database import Database
from stacks.functions import python_function
from stacks.metrics import NAMESPACE
from stacks.nag import acknowledge
from stacks.network import Network
from stacks.queue import RedisQueue
from stacks.runtime_env import database_user, pipelines_env, queue_env
from stacks.storage import UploadStorage

API_TIMEOUT = Duration.seconds(29)  # API Gateway's own integration limit
ENQUEUE_TIMEOUT = Duration.seconds(60)
QUEUE_METRICS_SCHEDULE = Duration.minutes(1)
RECONCILER_SCHEDULE = Duration.minutes(5)
STAGE = "v1"
# The queue-metrics and reconciler functions' reserved concurrency without RDS Proxy.
SCHEDULED_RESERVED_CONCURRENCY = 1

# (path, methods) as lambdas/api.py routes them.
ROUTES: dict[str, tuple[str, ...]] = {
    "uploads": ("POST", "GET"),
    "uploads/{upload_id}": ("GET", "DELETE"),
    "uploads/{upload_id}/parts": ("POST",),
    "uploads/{upload_id}/complete": ("POST",),
    "jobs": ("GET", "POST"),
    "jobs/{job_id}": ("GET",),
    "jobs/{job_id}/retry": ("POST",),
}


@dataclass(frozen=True, kw_only=True)
class LambdaPlacement:
    code: lambda_.Code
    vpc: ec2.IVpc
    subnets: ec2.SubnetSelection
    security_group: ec2.ISecurityGroup
    log_retention: logs.RetentionDays


class QueueLambdas(Construct):
    """The functions: API, enqueue, queue metrics, reconciler."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: ApiConfig,
        placement: LambdaPlacement,
        storage: UploadStorage,
        queue: RedisQueue,
        database: Database,
        schema: str,
        web_origins: tuple[str, ...],
        pipelines: PipelinesConfig,
        metrics_emf: bool = False,
    ) -> None:
        super().__init__(scope, id)
        base_env = {**queue_env(redis_url=queue.url, schema=schema), **pipelines_env(pipelines)}

        def database_env(component: str) -> dict[str, str]:
            """The function's own database user, through RDS Proxy (where the environment
            has one, else to the instance) with IAM: no secret."""
            return database.client_env(user=database_user(schema, component), proxy=True)

        # Without RDS Proxy each container of a function holds one PostgreSQL connection
        # (lambdas/runtime.py: a pool of one), so every function that uses PostgreSQL has a
        # reserved concurrency: what caps its connections (tests/infra/test_connection_budget.py
        # adds them up against the instance's max_connections). The scheduled functions run one
        # at a time anyway: a run that overlaps the previous one is dropped, not queued.
        direct = not database.has_proxy
        api_reserved = config.api_reserved_concurrency if direct else None
        scheduled_reserved = SCHEDULED_RESERVED_CONCURRENCY if direct else None

        def function(
            id: str, module: str, description: str, env: dict[str, str], **kwargs: Any
        ) -> lambda_.Function:
            return python_function(
                self,
                id,
                code=placement.code,
                handler=f"lambdas.{module}.handler",
                description=f"offload: {description}",
                vpc=placement.vpc,
                subnets=placement.subnets,
                security_group=placement.security_group,
                environment={
                    **base_env,
                    **env,
                    "POWERTOOLS_SERVICE_NAME": f"offload-{module.replace('_', '-')}",
                },
                log_retention=placement.log_retention,
                **kwargs,
            )

        self.api = function(
            "Api",
            "api",
            "upload and status API",
            {
                **database_env("api"),
                "UPLOAD_BUCKET": storage.bucket.bucket_name,
                "OFFLOAD_CORS_ORIGIN": ",".join(web_origins),
                "OFFLOAD_PROCESSED_ARCHIVE_AFTER_DAYS": str(storage.processed_archive_after_days),
                "OFFLOAD_MULTIPART_ABORT_AFTER_DAYS": str(
                    storage.abort_incomplete_multipart_after_days
                ),
            },
            timeout=API_TIMEOUT,
            memory_size=1024,
            reserved_concurrent_executions=api_reserved,
        )
        self.api.role.add_managed_policy(storage.manage_uploads_policy)  # type: ignore[union-attr]
        self.api.role.add_managed_policy(storage.read_processed_policy)  # type: ignore[union-attr]
        database.grant_connect(self.api, database_user(schema, "api"), proxy=True)
        _connect_as_producer(queue, self.api)  # POST /jobs and /jobs/{id}/retry enqueue

        self.enqueue = function(
            "Enqueue",
            "enqueue",
            "S3 upload events -> Redis queue",
            {**database_env("enqueue"), "UPLOAD_BUCKET": storage.bucket.bucket_name},
            timeout=ENQUEUE_TIMEOUT,
            reserved_concurrent_executions=config.enqueue_reserved_concurrency,
        )
        self.enqueue.add_event_source(
            sources.SqsEventSource(
                storage.events_queue,
                batch_size=config.enqueue_batch_size,
                max_batching_window=Duration.seconds(5),
                report_batch_item_failures=True,
                # Never more pollers than the reserved concurrency: throttled batches would
                # go back to the queue and towards the DLQ.
                max_concurrency=max(2, config.enqueue_reserved_concurrency),
            )
        )
        self.enqueue.role.add_managed_policy(storage.read_uploads_policy)  # type: ignore[union-attr]
        database.grant_connect(self.enqueue, database_user(schema, "enqueue"), proxy=True)
        _connect_as_producer(queue, self.enqueue)

        self.queue_metrics = function(
            "QueueMetrics",
            "queue_metrics",
            "publish queue counts to CloudWatch every minute",
            {},
            timeout=Duration.seconds(30),
            memory_size=256,
            reserved_concurrent_executions=scheduled_reserved,
        )
        _connect_as_producer(queue, self.queue_metrics)
        if metrics_emf:
            # no route to CloudWatch's API: EMF on stdout (lambdas/queue_metrics.py)
            self.queue_metrics.add_environment("OFFLOAD_METRICS_EMF", "true")
        else:
            self._grant_put_metrics()

        self.reconciler = function(
            "Reconciler",
            "reconciler",
            "re-enqueue uploads whose job is missing, abort expired uploads, every 5 minutes",
            database_env("reconciler"),
            timeout=Duration.minutes(2),
            reserved_concurrent_executions=scheduled_reserved,
        )
        # HEADs the objects of uploads whose S3 event was lost (offload/reconcile.py)
        self.reconciler.role.add_managed_policy(storage.read_uploads_policy)  # type: ignore[union-attr]
        # aborts pending multipart uploads whose part URLs expired (offload/expired_uploads.py)
        self.reconciler.role.add_managed_policy(storage.abort_uploads_policy)  # type: ignore[union-attr]
        database.grant_connect(self.reconciler, database_user(schema, "reconciler"), proxy=True)
        _connect_as_producer(queue, self.reconciler)

        for rule_id, fn, every in (
            ("QueueMetricsSchedule", self.queue_metrics, QUEUE_METRICS_SCHEDULE),
            ("ReconcilerSchedule", self.reconciler, RECONCILER_SCHEDULE),
        ):
            events.Rule(
                self,
                rule_id,
                description=f"offload: run {fn.node.id} every {every.to_minutes()} min",
                schedule=events.Schedule.rate(every),
                targets=[
                    targets.LambdaFunction(fn, retry_attempts=0, max_event_age=Duration.seconds(60))
                ],
            )

    def _grant_put_metrics(self) -> None:
        """PutMetricData in the Offload namespace only."""
        self.queue_metrics.add_to_role_policy(
            iam.PolicyStatement(
                sid="PutOffloadMetrics",
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],
                conditions={"StringEquals": {"cloudwatch:namespace": NAMESPACE}},
            )
        )
        acknowledge(
            self.queue_metrics,
            "AwsSolutions-IAM5[Resource::*]",
            "cloudwatch:PutMetricData takes no resource ARN; a condition limits it to the "
            "Offload namespace (and CDK's X-Ray grant is resource-less too).",
        )

    @property
    def all(self) -> list[lambda_.Function]:
        return [self.api, self.enqueue, self.queue_metrics, self.reconciler]


class UploadApi(Construct):
    """API Gateway REST API in front of the API Lambda, behind the Cognito authorizer."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        name: str,
        config: ApiConfig,
        handler: lambda_.IFunction,
        user_pool: cognito.IUserPool,
        web_origins: tuple[str, ...],
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, id)
        access_logs = logs.LogGroup(
            self, "AccessLogs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
        )
        self.rest_api = apigw.RestApi(
            self,
            "Api",
            # API Gateway's metrics are per API name: one of its own per environment, or the
            # 5XX alarm would add up every API called "Api" in the account and region.
            rest_api_name=name,
            description="offload upload and status API",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            cloud_watch_role=True,
            cloud_watch_role_removal_policy=RemovalPolicy.RETAIN,
            deploy_options=apigw.StageOptions(
                stage_name=STAGE,
                throttling_rate_limit=config.throttle_rate_limit,
                throttling_burst_limit=config.throttle_burst_limit,
                access_log_destination=apigw.LogGroupLogDestination(access_logs),
                access_log_format=apigw.AccessLogFormat.json_with_standard_fields(
                    caller=False,
                    http_method=True,
                    ip=True,
                    protocol=True,
                    request_time=True,
                    resource_path=True,
                    response_length=True,
                    status=True,
                    user=True,
                ),
                logging_level=apigw.MethodLoggingLevel.ERROR,
                data_trace_enabled=False,  # bodies carry presigned URLs: never log them
                metrics_enabled=True,
                tracing_enabled=True,
            ),
            default_cors_preflight_options=apigw.CorsOptions(
                allow_origins=list(web_origins),
                allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type"],
                max_age=Duration.minutes(10),
            ),
        )
        # Errors the gateway answers itself (401 from the authorizer, 429 throttling, ...)
        # carry CORS headers too, or a browser only sees an opaque network error.
        for response_id, response_type in (
            ("Default4xx", apigw.ResponseType.DEFAULT_4_XX),
            ("Default5xx", apigw.ResponseType.DEFAULT_5_XX),
        ):
            self.rest_api.add_gateway_response(
                response_id,
                type=response_type,
                response_headers={
                    "Access-Control-Allow-Origin": f"'{web_origins[0]}'",
                    "Vary": "'Origin'",
                },
            )

        authorizer = apigw.CognitoUserPoolsAuthorizer(
            self, "Authorizer", cognito_user_pools=[user_pool]
        )
        # Path parameters are required at the gateway; bodies are validated by the Lambda's
        # models (no API Gateway model is attached, so body validation is a no-op here).
        validator = self.rest_api.add_request_validator(
            "Validator", validate_request_parameters=True, validate_request_body=True
        )
        integration = apigw.LambdaIntegration(handler, allow_test_invoke=False)
        for path, methods in ROUTES.items():
            resource = self.rest_api.root.resource_for_path(path)
            parameters = {
                f"method.request.path.{part[1:-1]}": True
                for part in path.split("/")
                if part.startswith("{")
            }
            for method in methods:
                resource.add_method(
                    method,
                    integration,
                    authorizer=authorizer,
                    authorization_type=apigw.AuthorizationType.COGNITO,
                    request_validator=validator,
                    request_parameters=parameters or None,
                )

        for child in self.rest_api.node.find_all():
            if isinstance(child, apigw.Method) and child.http_method == "OPTIONS":
                acknowledge(
                    child,
                    "AwsSolutions-APIG4",
                    "CORS preflight (OPTIONS) must answer without credentials; it is a mock "
                    "integration that never reaches the Lambda.",
                )
                acknowledge(
                    child,
                    "AwsSolutions-COG4",
                    "CORS preflight (OPTIONS) must answer without credentials; it is a mock "
                    "integration that never reaches the Lambda.",
                )
        acknowledge(
            self.rest_api,
            "AwsSolutions-APIG3",
            "No WAF yet: every route needs a Cognito token and the stage is throttled; a WAF "
            "web ACL is the documented next step for public launch (docs/deploy.md).",
        )
        acknowledge(
            self.rest_api,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AmazonAPIGatewayPushToCloudWatchLogs]",
            "API Gateway's account-level logging role: the AWS managed policy is the "
            "documented way to let it write access and execution logs.",
        )

    @property
    def url(self) -> str:
        return self.rest_api.url


class ApiStack(OffloadStack):
    """The Lambdas (API, enqueue, queue metrics, reconciler) and the REST API."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: EnvConfig,
        network: Network,
        storage: UploadStorage,
        queue: RedisQueue,
        database: Database,
        user_pool: cognito.IUserPool,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, id, config=config, **kwargs)
        # One Code instance per stack (CDK's rule); the bundle itself is built once per synth.
        code = lambda_code(skip_bundling=skip_bundling(self.node))
        self.functions = QueueLambdas(
            self,
            "Functions",
            config=config.api,
            placement=LambdaPlacement(
                code=code,
                vpc=network.vpc,
                subnets=network.app_subnets,
                security_group=network.lambdas_sg,
                log_retention=config.log_retention,
            ),
            storage=storage,
            queue=queue,
            database=database,
            schema=config.database.schema,
            web_origins=config.web_origins,
            pipelines=config.pipelines,
            metrics_emf=not network.has_nat,
        )
        self.api = UploadApi(
            self,
            "UploadApi",
            name=f"offload-{config.name}",
            config=config.api,
            handler=self.functions.api,
            user_pool=user_pool,
            web_origins=config.web_origins,
            log_retention=config.log_retention,
        )
        CfnOutput(self, "ApiUrl", value=self.api.url)


def _connect_as_producer(queue: RedisQueue, fn: lambda_.Function) -> None:
    """Every Lambda that touches Redis is a producer (adds jobs, reads jobs and counts): it may
    log in as the producer user, with an IAM token of its own role."""
    for key, value in queue.connect_as("producer", fn).items():
        fn.add_environment(key, value)
