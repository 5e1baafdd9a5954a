"""The Fargate workers: ``python -m fargate_worker`` from ``fargate_worker/Dockerfile``.

- The image is a ``ContainerImage.from_asset`` of the repository root (``.dockerignore``
  keeps only ``offload/`` and ``fargate_worker/``, whose hashed lock the image installs):
  synth only stages it, ``cdk deploy`` builds and pushes it.
- Stop timeout 120 s (Fargate's maximum between SIGTERM and SIGKILL; the worker's own grace,
  ``OFFLOAD_SHUTDOWN_GRACE_S``, is shorter); container health check
  ``python -m fargate_worker.health``.
- No secret reaches the task. Redis: the worker logs in as its ElastiCache RBAC user
  (``offload-<env>-worker``) with an IAM token it signs per connection (``REDIS_USER``,
  ``REDIS_IAM_AUTH_CACHE``; ``offload.redis_iam``). PostgreSQL: the worker logs in
  to the instance as its own database user (``offload_worker``: job rows and events only,
  ``offload.db.roles``) with an IAM token it signs before each new connection
  (``DATABASE_IAM_USER``).
- The task role reads ``uploads/*``, writes ``processed/*``, may ``rds-db:connect`` as
  ``offload_worker`` and as ``offload_maintenance`` (the system jobs' role: the retention job
  deletes old final uploads; only the worker's parent process signs a login for it, the
  sandbox children have no AWS credentials: ``DATABASE_MAINTENANCE_IAM_USER``),
  ``elasticache:Connect`` as its Redis user, ``events:PutEvents`` on the configured bus
  (``workers.eventBusName``: an upload's final state), and sets its own task's scale-in
  protection, nothing else.
- Autoscaling on the queue backlog only (never on CPU: busy tasks would be killed): waiting
  jobs per running task, from the queue-metrics Lambda's ``Runnable`` metric and the tasks'
  own ``RunningTasks`` (Container Insights is optional per environment). Out in steps, fast,
  from zero on a backlog of one; in by one task at a time after the queue has been empty for
  a while. Minimum 0.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

from stacks.base import OffloadStack
from stacks.bundling import REPO_ROOT
from stacks.config import EnvConfig, PipelinesConfig, WorkersConfig
from stacks.database import Database
from stacks.metrics import RUNNABLE, queue_metric, running_tasks
from stacks.nag import acknowledge
from stacks.network import Network
from stacks.queue import RedisQueue
from stacks.runtime_env import QUEUE_NAME, database_user, pipelines_env, queue_env
from stacks.storage import UploadStorage

STOP_TIMEOUT = Duration.seconds(120)
SHUTDOWN_GRACE_S = 100  # < STOP_TIMEOUT: running jobs get this long after SIGTERM
HEALTH_COMMAND = ["CMD", "python", "-m", "fargate_worker.health"]
DOCKERFILE = "fargate_worker/Dockerfile"


def worker_image() -> ecs.ContainerImage:
    return ecs.ContainerImage.from_asset(
        str(REPO_ROOT),
        file=DOCKERFILE,
        platform=ecr_assets.Platform.LINUX_AMD64,
        # .dockerignore already keeps the build context small; these keep CDK's fingerprint
        # from walking big directories at all.
        exclude=[".venv", "node_modules", "cdk-cli", "cdk.out", ".cdk-cache", ".git", "tests"],
    )


def backlog_per_task(*, queue_name: str) -> Any:
    """Runnable jobs per running task; with no task running, the runnable count itself (so a
    backlog of one scales out from zero). Runnable: the waiting jobs of the main queue and of
    every step queue, a limited step's counted only up to what its limits let start (more
    tasks would not run those sooner). No data from the queue-metrics Lambda means no data
    here (the alarms stay put) rather than a fake zero. The running tasks are the workers' own
    ``RunningTasks`` (stacks/metrics.py), not Container Insights', which an environment may
    not pay for."""
    tasks = running_tasks(queue_name)
    return cloudwatch.MathExpression(
        expression="IF(FILL(tasks, 0) > 1, waiting / FILL(tasks, 0), waiting)",
        using_metrics={"waiting": queue_metric(RUNNABLE, queue_name), "tasks": tasks},
        label="Runnable jobs per running task",
        period=Duration.minutes(1),
    )


class Workers(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: WorkersConfig,
        image: ecs.ContainerImage,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        public_ip: bool,
        security_group: ec2.ISecurityGroup,
        storage: UploadStorage,
        queue: RedisQueue,
        database: Database,
        schema: str,
        log_retention: logs.RetentionDays,
        pipelines: PipelinesConfig,
    ) -> None:
        super().__init__(scope, id)
        self.cluster = ecs.Cluster(
            self,
            "Cluster",
            vpc=vpc,
            enable_fargate_capacity_providers=True,
            # per environment (workers.containerInsights): nothing here depends on it
            container_insights_v2=(
                ecs.ContainerInsights.ENABLED
                if config.container_insights
                else ecs.ContainerInsights.DISABLED
            ),
        )
        if not config.container_insights:
            acknowledge(
                self.cluster,
                "AwsSolutions-ECS4",
                "Container Insights off in this (non-production) environment to save its "
                "per-metric charge (workers.containerInsights); the autoscaling, the dashboard "
                "and the alarms read the tasks' own RunningTasks metric, and prod keeps it on.",
            )
        self.task_definition = ecs.FargateTaskDefinition(
            self,
            "Task",
            cpu=config.cpu,
            memory_limit_mib=config.memory_mib,
            runtime_platform=ecs.RuntimePlatform(
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
                cpu_architecture=ecs.CpuArchitecture.X86_64,
            ),
        )
        log_group = logs.LogGroup(
            self, "Logs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
        )
        environment = {
            **queue_env(redis_url=queue.url, schema=schema),
            **pipelines_env(pipelines),
            **queue.connect_as("worker", self.task_definition.task_role),
            "OFFLOAD_CONCURRENCY": str(config.concurrency),
            "OFFLOAD_SHUTDOWN_GRACE_S": str(SHUTDOWN_GRACE_S),
            "UPLOAD_BUCKET": storage.bucket.bucket_name,
            # Upload Processed / Upload Failed (offload.upload_events)
            "OFFLOAD_EVENT_BUS": config.event_bus_name,
            # PostgreSQL, directly (not through the proxy), as the worker's own database user
            # with an IAM token (offload.db.credentials): no password, no secret.
            **database.client_env(user=database_user(schema, "worker"), proxy=False),
            # The system jobs (fargate_worker.system_jobs) log in as their own database user.
            "DATABASE_MAINTENANCE_IAM_USER": database_user(schema, "maintenance"),
        }
        self.container = self.task_definition.add_container(
            "Worker",
            image=image,
            essential=True,
            environment=environment,
            logging=ecs.LogDrivers.aws_logs(stream_prefix="worker", log_group=log_group),
            health_check=ecs.HealthCheck(
                command=HEALTH_COMMAND,
                interval=Duration.seconds(30),
                timeout=Duration.seconds(5),
                retries=3,
                start_period=Duration.seconds(60),
            ),
            stop_timeout=STOP_TIMEOUT,
        )
        acknowledge(
            self.task_definition,
            "AwsSolutions-ECS2",
            "Only non-secret settings are plain environment variables; the Redis token is "
            "injected from Secrets Manager and the database login is an IAM token.",
        )

        spot = [ecs.CapacityProviderStrategy(capacity_provider="FARGATE_SPOT", weight=3)]
        on_demand = [ecs.CapacityProviderStrategy(capacity_provider="FARGATE", weight=1)]
        self.service = ecs.FargateService(
            self,
            "Service",
            cluster=self.cluster,
            task_definition=self.task_definition,
            # No DesiredCount in the template: CloudFormation then keeps the running count on
            # every update (a value here would reset the autoscaled fleet to it on each deploy,
            # aws/aws-cdk#3919); a new service starts one task, which scales in when idle. The
            # minimum is the scalable target's (min_tasks).
            desired_count=None,
            min_healthy_percent=100,
            max_healthy_percent=200,
            circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
            capacity_provider_strategies=spot + on_demand if config.spot else on_demand,
            vpc_subnets=subnets,
            security_groups=[security_group],
            # Only in public subnets (no NAT gateway): the way out; nothing can come in, the
            # group has no inbound rule.
            assign_public_ip=public_ip,
            platform_version=ecs.FargatePlatformVersion.LATEST,
            enable_ecs_managed_tags=True,
            propagate_tags=ecs.PropagatedTagSource.SERVICE,
        )

        self._grant_task_role(storage)
        # Publishing an upload's final state: PutEvents on that one bus.
        events.EventBus.from_event_bus_name(
            self, "UploadEvents", config.event_bus_name
        ).grant_put_events_to(self.task_definition.task_role)
        for component in ("worker", "maintenance"):
            database.grant_connect(
                self.task_definition.task_role, database_user(schema, component), proxy=False
            )
        self._autoscale(config)

    def _grant_task_role(self, storage: UploadStorage) -> None:
        role = self.task_definition.task_role
        stack = Stack.of(self)
        role.add_managed_policy(storage.read_uploads_policy)
        role.add_managed_policy(storage.write_processed_policy)
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="OwnTaskScaleInProtection",
                actions=["ecs:UpdateTaskProtection", "ecs:GetTaskProtection"],
                resources=[
                    stack.format_arn(
                        service="ecs",
                        resource="task",
                        resource_name=f"{self.cluster.cluster_name}/*",
                    )
                ],
            )
        )
        cluster_ref = stack.resolve(self.cluster.node.default_child.logical_id)  # type: ignore[union-attr]
        acknowledge(
            role,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ecs:<AWS::Region>:"
            f"<AWS::AccountId>:task/<{cluster_ref}>/*]",
            "Scale-in protection of its own task: task ids are only known at run time, so the "
            "resource is every task of this cluster.",
        )
        acknowledge(
            self.task_definition.obtain_execution_role(),
            "AwsSolutions-IAM5[Resource::*]",
            "ecr:GetAuthorizationToken (pulling the image) takes no resource ARN.",
        )

    def _autoscale(self, config: WorkersConfig) -> None:
        self.scaling = self.service.auto_scale_task_count(
            min_capacity=config.min_tasks, max_capacity=config.max_tasks
        )
        self.backlog_per_task = backlog_per_task(queue_name=QUEUE_NAME)
        per_task = config.concurrency
        self.scaling.scale_on_metric(
            "ScaleOutOnBacklog",
            metric=self.backlog_per_task,
            scaling_steps=[
                appscaling.ScalingInterval(upper=1, change=0),
                appscaling.ScalingInterval(lower=1, change=1),
                appscaling.ScalingInterval(lower=2 * per_task, change=2),
                appscaling.ScalingInterval(lower=8 * per_task, change=5),
            ],
            adjustment_type=appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
            metric_aggregation_type=appscaling.MetricAggregationType.MAXIMUM,
            evaluation_periods=1,
            cooldown=Duration.seconds(60),
        )
        idle = config.scale_in_after_idle_minutes
        self.scaling.scale_on_metric(
            "ScaleInWhenIdle",
            metric=self.backlog_per_task,
            scaling_steps=[
                appscaling.ScalingInterval(upper=0, change=-1),
                appscaling.ScalingInterval(lower=1, change=0),
            ],
            adjustment_type=appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
            metric_aggregation_type=appscaling.MetricAggregationType.MAXIMUM,
            evaluation_periods=idle,
            datapoints_to_alarm=idle,
            cooldown=Duration.minutes(5),
        )


class WorkersStack(OffloadStack):
    """ECS cluster and the autoscaled Fargate worker service."""

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
        image: ecs.ContainerImage | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, id, config=config, **kwargs)
        self.workers = Workers(
            self,
            "Workers",
            config=config.workers,
            image=image or worker_image(),
            vpc=network.vpc,
            subnets=network.worker_subnets,
            public_ip=not network.has_nat,
            security_group=network.workers_sg,
            storage=storage,
            queue=queue,
            database=database,
            schema=config.database.schema,
            log_retention=config.log_retention,
            pipelines=config.pipelines,
        )
