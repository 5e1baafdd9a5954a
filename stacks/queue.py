"""The job queue's Redis: an ElastiCache (Redis OSS 7) replication group.

- ``maxmemory-policy noeviction`` in its own parameter group: BullMQ requires it (an evicted
  job key is a lost job), and ElastiCache blocks ``CONFIG GET``, so the template is the only
  place this can be checked (tests/infra/test_stacks_queue.py does).
- TLS in transit (``required``), encryption at rest.
- No shared AUTH token: ElastiCache RBAC, a user group of one user per role (producer, worker,
  operator) with the ACL rules of ``stacks/redis_acl.py`` (the queue's keys and bullmq's
  commands only), plus the ``default`` user every group must hold, switched off. The role
  users authenticate with IAM: a client signs a short-lived token with its own role's
  credentials, and only the roles granted ``elasticache:Connect`` on a user (``connect_as``)
  can log in as it. No password exists to leak or rotate.
- Multi-AZ with automatic failover when the environment asks for two nodes or more (prod).
- Isolated subnets; its security group admits only the workers' and the Lambdas' groups, on
  6379.

Stateful: ``QueueStack`` has termination protection where the environment asks for it; never
rename the construct ids.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import ArnFormat, Fn, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticache as elasticache
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

from stacks import redis_acl
from stacks.base import OffloadStack
from stacks.config import EnvConfig, RedisConfig
from stacks.nag import acknowledge
from stacks.network import REDIS_PORT, Network
from stacks.runtime_env import QUEUE_PREFIX


class RedisQueue(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: RedisConfig,
        name_prefix: str,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        clients: list[ec2.ISecurityGroup],
        log_retention: logs.RetentionDays,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, id)
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="offload Redis: 6379 from the workers and the Lambdas only",
            allow_all_outbound=False,
        )
        for client in clients:
            self.security_group.add_ingress_rule(
                client, ec2.Port.tcp(REDIS_PORT), "Redis (TLS) from an offload workload"
            )

        # ElastiCache users belong to the account and region, not to a cache: names carry
        # the environment. IAM authentication wants the user id equal to the user name.
        prefix = "{" + QUEUE_PREFIX + "}"  # as offload/settings.py hash-tags it
        self.users = {
            role: elasticache.CfnUser(
                self,
                f"User{role.capitalize()}",
                engine="redis",
                user_id=redis_acl.user_name(name_prefix, role),
                user_name=redis_acl.user_name(name_prefix, role),
                access_string=redis_acl.access_string(role, prefix),
                authentication_mode={"Type": "iam"},
            )
            for role in redis_acl.ROLES
        }
        default_user = elasticache.CfnUser(
            self,
            "UserDefault",
            engine="redis",
            user_id=redis_acl.user_name(name_prefix, "default"),
            user_name="default",  # required in every user group; off, so it can do nothing
            access_string=redis_acl.DEFAULT_USER_ACCESS,
            authentication_mode={"Type": "no-password-required"},
        )
        self.user_group = elasticache.CfnUserGroup(
            self,
            "UserGroup",
            engine="redis",
            user_group_id=f"{name_prefix}-queue",
            user_ids=[default_user.ref, *(user.ref for user in self.users.values())],
        )

        subnet_group = elasticache.CfnSubnetGroup(
            self,
            "SubnetGroup",
            description="offload Redis: isolated subnets",
            subnet_ids=vpc.select_subnets(subnet_group_name=subnets.subnet_group_name).subnet_ids,
        )
        self.parameter_group = elasticache.CfnParameterGroup(
            self,
            "Parameters",
            cache_parameter_group_family=config.parameter_group_family,
            description="offload Redis: BullMQ needs noeviction (evicted keys are lost jobs)",
            properties={"maxmemory-policy": "noeviction"},
        )
        slow_log = logs.LogGroup(
            self, "SlowLog", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
        )
        engine_log = logs.LogGroup(
            self, "EngineLog", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
        )

        def delivery(
            log_type: str, group: logs.LogGroup
        ) -> elasticache.CfnReplicationGroup.LogDeliveryConfigurationRequestProperty:
            return elasticache.CfnReplicationGroup.LogDeliveryConfigurationRequestProperty(
                destination_type="cloudwatch-logs",
                destination_details=elasticache.CfnReplicationGroup.DestinationDetailsProperty(
                    cloud_watch_logs_details=elasticache.CfnReplicationGroup.CloudWatchLogsDestinationDetailsProperty(
                        log_group=group.log_group_name
                    )
                ),
                log_format="json",
                log_type=log_type,
            )

        self.replication_group = elasticache.CfnReplicationGroup(
            self,
            "ReplicationGroup",
            replication_group_description="offload job queue (BullMQ)",
            engine="redis",
            engine_version=config.engine_version,
            cache_node_type=config.node_type,
            num_cache_clusters=config.nodes,
            automatic_failover_enabled=config.multi_az,
            multi_az_enabled=config.multi_az,
            cache_parameter_group_name=self.parameter_group.ref,
            cache_subnet_group_name=subnet_group.ref,
            security_group_ids=[self.security_group.security_group_id],
            port=REDIS_PORT,
            at_rest_encryption_enabled=True,
            transit_encryption_enabled=True,
            transit_encryption_mode="required",
            user_group_ids=[self.user_group.ref],
            auto_minor_version_upgrade=True,
            snapshot_retention_limit=config.snapshot_retention_days,
            preferred_maintenance_window="sun:04:00-sun:05:00",
            log_delivery_configurations=[
                delivery("slow-log", slow_log),
                delivery("engine-log", engine_log),
            ],
        )
        self.replication_group.apply_removal_policy(
            RemovalPolicy.SNAPSHOT if removal_policy == RemovalPolicy.RETAIN else removal_policy
        )
        acknowledge(
            self.replication_group,
            "AwsSolutions-AEC6",
            "No Redis AUTH token on purpose: RBAC (a user group of per-role users with IAM "
            "authentication and least-privilege ACLs, stacks/redis_acl.py) replaces it.",
        )
        acknowledge(
            self.replication_group,
            "AwsSolutions-AEC5",
            "Default port kept on purpose: the security group admits only the workloads' groups, "
            "and clients (bullmq, redis-cli) assume 6379.",
        )
        if not config.multi_az:
            acknowledge(
                self.replication_group,
                "AwsSolutions-AEC4",
                "Single node in this (non-production) environment to save cost; jobs lost with "
                "it are re-enqueued from PostgreSQL by the reconciler.",
            )

        self.host = self.replication_group.attr_primary_end_point_address
        self.port = self.replication_group.attr_primary_end_point_port
        # rediss:// = TLS with certificate verification; the user and its IAM token come
        # separately (connect_as).
        self.url = Fn.join("", ["rediss://", self.host, ":", self.port, "/0"])

    def connect_as(self, role: str, grantee: iam.IGrantable) -> dict[str, str]:
        """Let ``grantee`` log in as ``role``'s user (``elasticache:Connect`` on this
        replication group and that user only); returns the environment that makes the runtime
        do so (offload/redis_iam.py)."""
        user = self.users[role]
        group_arn = Stack.of(self).format_arn(
            service="elasticache",
            resource="replicationgroup",
            resource_name=self.replication_group.ref,
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["elasticache:Connect"],
            resource_arns=[group_arn, user.attr_arn],
        )
        return {"REDIS_USER": user.user_name, "REDIS_IAM_AUTH_CACHE": self.replication_group.ref}


class QueueStack(OffloadStack):
    """ElastiCache Redis for the BullMQ job queue (stateful)."""

    stateful = True

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: EnvConfig,
        network: Network,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, id, config=config, **kwargs)
        self.queue = RedisQueue(
            self,
            "Redis",
            config=config.redis,
            name_prefix=f"offload-{config.name}",
            vpc=network.vpc,
            subnets=network.data_subnets,
            clients=[network.workers_sg, network.lambdas_sg],
            log_retention=config.log_retention,
            removal_policy=self.stateful_removal_policy,
        )
