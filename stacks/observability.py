"""One CloudWatch dashboard for the whole pipeline, and the alarms that page someone (to one SNS
topic, with an optional e-mail subscription from ``cdk.json``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aws_cdk import Duration, Fn, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticache as elasticache
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_rds as rds
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from stacks.base import OffloadStack
from stacks.config import EnvConfig, ObservabilityConfig
from stacks.metrics import (
    ACTIVE,
    DELAYED,
    JOB_DURATION,
    JOBS_COMPLETED,
    JOBS_FAILED,
    NAMESPACE,
    OLDEST_WAITING_AGE,
    QUEUE_DIMENSION,
    RUNNABLE,
    WAITING,
    queue_metric,
    running_tasks,
)
from stacks.nag import acknowledge
from stacks.runtime_env import QUEUE_NAME

FIVE_MINUTES = Duration.minutes(5)
ONE_MINUTE = Duration.minutes(1)


class Monitoring(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: ObservabilityConfig,
        env_name: str,
        functions: dict[str, lambda_.IFunction],
        enqueue: lambda_.IFunction,
        service: ecs.FargateService,
        cluster: ecs.ICluster,
        events_dlq: sqs.IQueue,
        events_queue: sqs.IQueue,
        redis: elasticache.CfnReplicationGroup,
        redis_nodes: int,
        database: rds.IDatabaseInstance,
        rest_api: apigw.RestApi,
    ) -> None:
        super().__init__(scope, id)
        self.topic = sns.Topic(
            self, "AlarmTopic", display_name=f"offload {env_name} alarms", enforce_ssl=True
        )
        acknowledge(
            self.topic,
            "AwsSolutions-SNS2",
            "Alarm notifications carry no sensitive data, and CloudWatch cannot publish to a "
            "topic encrypted with the AWS managed SNS key.",
        )
        # enforce_ssl writes a topic policy, and a topic policy replaces SNS's default one,
        # which is what let the account's own services publish: without this statement every
        # alarm action would fail ("not authorized to perform: SNS:Publish").
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchAlarmsPublish",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions={"StringEquals": {"aws:SourceAccount": Stack.of(self).account}},
            )
        )
        if config.alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(config.alarm_email))
        self.alarms: list[cloudwatch.Alarm] = []

        q = QUEUE_NAME
        waiting = queue_metric(WAITING, q, label="waiting")
        # every queue's backlog that workers could start (step queues included)
        runnable = queue_metric(RUNNABLE, q, label="runnable (all queues)")
        active = queue_metric(ACTIVE, q, label="active")
        delayed = queue_metric(DELAYED, q, label="delayed")
        oldest = queue_metric(OLDEST_WAITING_AGE, q, label="oldest waiting (s)")
        completed = queue_metric(JOBS_COMPLETED, q, statistic="Sum", label="completed / min")
        failed = queue_metric(JOBS_FAILED, q, statistic="Sum", label="failed / min")
        durations = [
            queue_metric(JOB_DURATION, q, statistic=p, label=f"duration {p} (ms)")
            for p in ("p50", "p90", "p99")
        ]
        # the workers' own count (with or without Container Insights)
        tasks = running_tasks(q, label="running tasks")
        redis_nodes_ids = [
            Fn.join("", [redis.ref, f"-{index:03d}"]) for index in range(1, redis_nodes + 1)
        ]

        def redis_metric(name: str, node: str, label: str) -> cloudwatch.Metric:
            return cloudwatch.Metric(
                namespace="AWS/ElastiCache",
                metric_name=name,
                dimensions_map={"CacheClusterId": node},
                statistic="Maximum",
                period=ONE_MINUTE,
                label=label,
            )

        # --- alarms that page ------------------------------------------------------------
        self._alarm(
            "OldestWaitingJob",
            oldest,
            threshold=config.oldest_waiting_age_alarm_seconds,
            periods=3,
            description="A job has waited too long: workers are not keeping up or not running.",
        )
        self._alarm(
            "QueueMetricsMissing",
            queue_metric(WAITING, q, statistic="SampleCount", period=FIVE_MINUTES),
            threshold=1,
            comparison=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
            missing=cloudwatch.TreatMissingData.BREACHING,
            description="No queue metrics for 5 minutes: worker autoscaling is blind.",
        )
        self._alarm(
            "BacklogWithoutWorkers",
            cloudwatch.MathExpression(
                expression="IF(waiting > 0 AND FILL(tasks, 0) < 1, 1, 0)",
                using_metrics={"waiting": runnable, "tasks": tasks},
                period=ONE_MINUTE,
                label="backlog with no running worker",
            ),
            threshold=1,
            periods=10,
            description="Jobs are waiting and no worker has run for 10 minutes.",
        )
        self._alarm(
            "JobsFailing",
            queue_metric(JOBS_FAILED, q, statistic="Sum", period=FIVE_MINUTES),
            threshold=5,
            description="5 or more job attempts failed in 5 minutes.",
        )
        self._alarm(
            "UploadEventsDlq",
            events_dlq.metric_approximate_number_of_messages_visible(
                period=ONE_MINUTE, statistic="Maximum"
            ),
            threshold=1,
            description="S3 upload events reached the DLQ: uploads are not being enqueued.",
        )
        for name, function in functions.items():
            self._alarm(
                f"{name}Errors",
                function.metric_errors(period=FIVE_MINUTES, statistic="Sum"),
                threshold=1,
                description=f"The {name} Lambda failed.",
            )
        self._alarm(
            "EnqueueMalformedMessages",
            cloudwatch.Metric(
                namespace=NAMESPACE,
                metric_name="MessagesMalformed",
                dimensions_map={QUEUE_DIMENSION: q, "service": "offload-enqueue"},
                statistic="Sum",
                period=FIVE_MINUTES,
            ),
            threshold=1,
            description="The enqueue Lambda received messages that are not S3 events.",
        )
        self._alarm(
            "EnqueueThrottles",
            enqueue.metric_throttles(period=FIVE_MINUTES, statistic="Sum"),
            threshold=1,
            description="The enqueue Lambda hit its reserved concurrency.",
        )
        self._alarm(
            "Api5xx",
            rest_api.metric_server_error(period=FIVE_MINUTES, statistic="Sum"),
            threshold=5,
            description="The API answered 5 or more 5xx in 5 minutes.",
        )
        for index, node in enumerate(redis_nodes_ids, start=1):
            self._alarm(
                f"RedisMemoryNode{index}",
                redis_metric("DatabaseMemoryUsagePercentage", node, "memory %"),
                threshold=80,
                periods=5,
                description="Redis memory above 80%: with noeviction, writes fail when full.",
            )
            self._alarm(
                f"RedisEngineCpuNode{index}",
                redis_metric("EngineCPUUtilization", node, "engine CPU %"),
                threshold=80,
                periods=10,
                description="Redis engine CPU above 80% for 10 minutes.",
            )
        self._alarm(
            "DatabaseCpu",
            database.metric_cpu_utilization(period=ONE_MINUTE, statistic="Average"),
            threshold=80,
            periods=15,
            description="PostgreSQL CPU above 80% for 15 minutes.",
        )
        self._alarm(
            "DatabaseFreeStorage",
            database.metric_free_storage_space(period=FIVE_MINUTES, statistic="Minimum"),
            threshold=2 * 1024**3,
            comparison=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
            description="PostgreSQL has less than 2 GiB of free storage.",
        )

        # --- the dashboard ---------------------------------------------------------------
        def graph(title: str, metrics: Sequence[cloudwatch.IMetric], **kwargs: Any) -> Any:
            return cloudwatch.GraphWidget(
                title=title, left=list(metrics), width=8, height=6, **kwargs
            )

        fns = list(functions.items())
        if not config.dashboard:
            return
        self.dashboard = cloudwatch.Dashboard(
            self,
            "Dashboard",
            default_interval=Duration.hours(3),
            widgets=[
                [
                    cloudwatch.TextWidget(
                        markdown=f"# offload ({env_name})\nQueue `{q}`: backlog, throughput, "
                        "workers, Lambdas, data stores. Alarms go to the SNS topic.",
                        width=24,
                        height=2,
                    )
                ],
                [
                    graph("Queue backlog", [waiting, active, delayed, runnable]),
                    graph("Oldest waiting job (s)", [oldest]),
                    graph("Jobs completed / failed per minute", [completed, failed]),
                ],
                [
                    graph("Job duration (ms)", durations),
                    graph("Worker tasks", [tasks]),
                    graph(
                        "Worker CPU / memory (%)",
                        [
                            service.metric_cpu_utilization(period=ONE_MINUTE),
                            service.metric_memory_utilization(period=ONE_MINUTE),
                        ],
                    ),
                ],
                [
                    graph(
                        "Lambda errors",
                        [fn.metric_errors(period=ONE_MINUTE, label=n) for n, fn in fns],
                    ),
                    graph(
                        "Lambda throttles",
                        [fn.metric_throttles(period=ONE_MINUTE, label=n) for n, fn in fns],
                    ),
                    graph(
                        "Lambda duration p90 (ms)",
                        [
                            fn.metric_duration(period=ONE_MINUTE, statistic="p90", label=n)
                            for n, fn in fns
                        ],
                    ),
                ],
                [
                    graph(
                        "S3 events: queue and DLQ depth",
                        [
                            events_queue.metric_approximate_number_of_messages_visible(
                                period=ONE_MINUTE, label="events waiting"
                            ),
                            events_dlq.metric_approximate_number_of_messages_visible(
                                period=ONE_MINUTE, label="DLQ"
                            ),
                        ],
                    ),
                    graph(
                        "API requests and errors",
                        [
                            rest_api.metric_count(period=ONE_MINUTE, label="requests"),
                            rest_api.metric_client_error(period=ONE_MINUTE, label="4xx"),
                            rest_api.metric_server_error(period=ONE_MINUTE, label="5xx"),
                        ],
                    ),
                    graph(
                        "API latency (ms)",
                        [rest_api.metric_latency(period=ONE_MINUTE, statistic="p90", label="p90")],
                    ),
                ],
                [
                    graph(
                        "Redis memory / engine CPU (%)",
                        [
                            redis_metric(name, node, f"{label} {node_index}")
                            for node_index, node in enumerate(redis_nodes_ids, start=1)
                            for name, label in (
                                ("DatabaseMemoryUsagePercentage", "memory"),
                                ("EngineCPUUtilization", "CPU"),
                            )
                        ],
                    ),
                    graph(
                        "Redis connections",
                        [
                            redis_metric("CurrConnections", node, f"node {node_index}")
                            for node_index, node in enumerate(redis_nodes_ids, start=1)
                        ],
                    ),
                    graph(
                        "PostgreSQL CPU (%) / connections",
                        [database.metric_cpu_utilization(period=ONE_MINUTE)],
                        right=[database.metric_database_connections(period=ONE_MINUTE)],
                    ),
                ],
                [cloudwatch.AlarmStatusWidget(alarms=list(self.alarms), width=24, height=4)],
            ],
        )

    def _alarm(
        self,
        id: str,
        metric: cloudwatch.IMetric,
        *,
        threshold: float,
        description: str,
        periods: int = 1,
        comparison: cloudwatch.ComparisonOperator = (
            cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD
        ),
        missing: cloudwatch.TreatMissingData = cloudwatch.TreatMissingData.NOT_BREACHING,
    ) -> cloudwatch.Alarm:
        alarm = cloudwatch.Alarm(
            self,
            id,
            metric=metric,
            threshold=threshold,
            evaluation_periods=periods,
            datapoints_to_alarm=periods,
            comparison_operator=comparison,
            treat_missing_data=missing,
            alarm_description=description,
        )
        alarm.add_alarm_action(actions.SnsAction(self.topic))
        alarm.add_ok_action(actions.SnsAction(self.topic))
        self.alarms.append(alarm)
        return alarm


class ObservabilityStack(OffloadStack):
    """Dashboard, alarms and the alarm topic."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: EnvConfig,
        functions: dict[str, lambda_.IFunction],
        enqueue: lambda_.IFunction,
        service: ecs.FargateService,
        cluster: ecs.ICluster,
        events_dlq: sqs.IQueue,
        events_queue: sqs.IQueue,
        redis: elasticache.CfnReplicationGroup,
        database: rds.IDatabaseInstance,
        rest_api: apigw.RestApi,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, id, config=config, **kwargs)
        self.monitoring = Monitoring(
            self,
            "Monitoring",
            config=config.observability,
            env_name=config.name,
            functions=functions,
            enqueue=enqueue,
            service=service,
            cluster=cluster,
            events_dlq=events_dlq,
            events_queue=events_queue,
            redis=redis,
            redis_nodes=config.redis.nodes,
            database=database,
            rest_api=rest_api,
        )
