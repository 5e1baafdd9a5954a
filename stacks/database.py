"""PostgreSQL on RDS: the source of truth for uploads and job status.

- PostgreSQL 16, minor version pinned (upgrades are deliberate: bump ``ENGINE_VERSION``).
- Encrypted storage, TLS required (``rds.force_ssl``), isolated subnets.
- Master credentials generated into Secrets Manager, rotated on a schedule (single user), for
  the schema migrations only (``stacks/migrations.py``, directly to the instance).
- Every runtime component logs in as its own database role (``offload.db.roles``, made by the
  migrations) with IAM authentication: :meth:`Database.grant_connect` lets one IAM principal
  ``rds-db:connect`` as one database user, no password exists at run time.
- Clients verify the server (``sslmode=verify-full``, ``stacks/runtime_env.py``): the
  instance's CA is pinned (``rds-ca-rsa2048-g1``) and the roots of it and of RDS Proxy's
  certificates ship with the runtime (``offload/db/ca/``).
- RDS Proxy (end-to-end IAM authentication, TLS required) for the Lambdas where the
  environment has one (``database.proxy``; else the Lambdas connect to the instance, their
  reserved concurrency capping their connections: stacks/api.py); the Fargate workers,
  long-lived with small pools, connect to the instance directly.
- Backups; Multi-AZ and deletion protection where the environment asks (prod).

Stateful: ``DatabaseStack`` has termination protection where the environment asks for it;
never rename the construct ids.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from stacks.base import OffloadStack
from stacks.config import DatabaseConfig, EnvConfig
from stacks.nag import acknowledge
from stacks.network import POSTGRES_PORT, Network
from stacks.runtime_env import database_env, database_user

ENGINE_VERSION = rds.PostgresEngineVersion.VER_16_13
MASTER_USER = "offload_admin"
# The components that reach PostgreSQL through RDS Proxy (the Lambdas; offload.db.roles).
PROXIED = ("api", "enqueue", "reconciler")


class Database(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: DatabaseConfig,
        instance_identifier: str,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        proxy_clients: list[ec2.ISecurityGroup],
        direct_clients: list[ec2.ISecurityGroup],
        log_retention: logs.RetentionDays,
        removal_policy: RemovalPolicy,
        deletion_protection: bool,
        proxy_users: tuple[str, ...],
    ) -> None:
        super().__init__(scope, id)
        self.database_name = config.database_name
        self.proxy_users = proxy_users
        engine = rds.DatabaseInstanceEngine.postgres(version=ENGINE_VERSION)
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            # (the migrations function is admitted too; the text stays: a changed description
            # replaces the group)
            description="offload PostgreSQL: from its proxy, the workers and the rotation only",
            allow_all_outbound=False,
        )
        # Without a proxy (database.proxy: false) its clients, the Lambdas, reach the instance.
        if not config.proxy:
            direct_clients = [*direct_clients, *proxy_clients]
        # (the proxy -> instance rule is added by add_proxy below, the rotation function's by
        # add_rotation_single_user)
        for client in direct_clients:
            self.security_group.add_ingress_rule(
                client, ec2.Port.tcp(POSTGRES_PORT), "PostgreSQL from an offload workload"
            )

        parameters = rds.ParameterGroup(
            self,
            "Parameters",
            engine=engine,
            description="offload PostgreSQL: TLS only",
            parameters={"rds.force_ssl": "1", "log_min_duration_statement": "1000"},
        )
        # Log groups made here (not by a LogRetention custom resource) so they have a retention
        # from the start; RDS writes to /aws/rds/instance/<identifier>/<log>.
        log_groups = [
            logs.LogGroup(
                self,
                f"{name.capitalize()}Log",
                log_group_name=f"/aws/rds/instance/{instance_identifier}/{name}",
                retention=log_retention,
                removal_policy=RemovalPolicy.DESTROY,
            )
            for name in ("postgresql", "upgrade")
        ]
        self.instance = rds.DatabaseInstance(
            self,
            "Instance",
            engine=engine,
            instance_identifier=instance_identifier,
            instance_type=ec2.InstanceType(config.instance_type),
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[self.security_group],
            credentials=rds.Credentials.from_generated_secret(MASTER_USER),
            database_name=config.database_name,
            port=POSTGRES_PORT,
            storage_encrypted=True,
            storage_type=rds.StorageType.GP3,
            allocated_storage=config.allocated_storage_gib,
            max_allocated_storage=config.max_allocated_storage_gib,
            multi_az=config.multi_az,
            backup_retention=Duration.days(config.backup_retention_days),
            preferred_backup_window="02:00-03:00",
            preferred_maintenance_window="sun:03:00-sun:04:00",
            deletion_protection=deletion_protection,
            removal_policy=(
                RemovalPolicy.SNAPSHOT if removal_policy == RemovalPolicy.RETAIN else removal_policy
            ),
            delete_automated_backups=removal_policy != RemovalPolicy.RETAIN,
            parameter_group=parameters,
            cloudwatch_logs_exports=["postgresql", "upgrade"],
            auto_minor_version_upgrade=False,  # the minor version is pinned in code
            iam_authentication=True,
            copy_tags_to_snapshot=True,
            publicly_accessible=False,
            ca_certificate=rds.CaCertificate.RDS_CA_RSA2048_G1,
        )
        for group in log_groups:
            self.instance.node.add_dependency(group)
        assert self.instance.secret is not None
        self.secret: secretsmanager.ISecret = self.instance.secret

        self.rotation = self.instance.add_rotation_single_user(
            automatically_after=Duration.days(config.rotation_days),
        )

        self.proxy: rds.DatabaseProxy | None = None
        if config.proxy:
            self.proxy = self._add_proxy(vpc, subnets, proxy_clients)

        acknowledge(
            self.instance,
            "AwsSolutions-RDS11",
            "Default port kept: the security group admits only the proxy, the workers and the "
            "rotation function, and every client assumes 5432.",
        )
        if not config.multi_az:
            acknowledge(
                self.instance,
                "AwsSolutions-RDS3",
                "Single-AZ in this (non-production) environment to save cost; prod is Multi-AZ.",
            )
        if not deletion_protection:
            acknowledge(
                self.instance,
                "AwsSolutions-RDS10",
                "No deletion protection in this (non-production) environment so it can be torn "
                "down; prod has it.",
            )

    def _add_proxy(
        self,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        clients: list[ec2.ISecurityGroup],
    ) -> rds.DatabaseProxy:
        """End-to-end IAM: clients present a token for their own user, and the proxy logs in
        to the instance with IAM as that user too; it holds no secret, and the master user
        cannot log in through it. Its role may connect to the instance as the proxied users
        only (the Lambdas' database users)."""
        self.proxy_security_group = ec2.SecurityGroup(
            self,
            "ProxySecurityGroup",
            vpc=vpc,
            description="offload RDS Proxy: from the Lambdas only",
        )
        for client in clients:
            self.proxy_security_group.add_ingress_rule(
                client, ec2.Port.tcp(POSTGRES_PORT), "PostgreSQL (TLS) from the Lambdas"
            )
        self.proxy_role = iam.Role(
            self,
            "ProxyRole",
            assumed_by=iam.ServicePrincipal("rds.amazonaws.com"),
            description="offload RDS Proxy: IAM logins to the instance as the Lambdas' users",
        )
        for user in self.proxy_users:
            self.instance.grant_connect(self.proxy_role, user)
        return self.instance.add_proxy(
            "Proxy",
            role=self.proxy_role,
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[self.proxy_security_group],
            require_tls=True,
            default_auth_scheme=rds.DefaultAuthScheme.IAM_AUTH,
            idle_client_timeout=Duration.minutes(30),
            max_connections_percent=80,
            # Below API Gateway's 29 s: a saturated pool answers the API Lambda in time for it
            # to return 503, instead of API Gateway timing the request out with 504.
            borrow_timeout=Duration.seconds(20),
        )

    @property
    def has_proxy(self) -> bool:
        return self.proxy is not None

    def grant_connect(self, grantee: iam.IGrantable, db_user: str, *, proxy: bool) -> None:
        """``rds-db:connect`` as ``db_user`` only, on the proxy (``proxy=True``: the
        Lambdas, where the environment has a proxy) or on the instance (the workers, and the
        Lambdas without a proxy): one database user per IAM principal."""
        if proxy and self.proxy is not None:
            if db_user not in self.proxy_users:
                raise ValueError(f"{db_user} is not among the proxy's users {self.proxy_users}")
            self.proxy.grant_connect(grantee, db_user)
        else:
            self.instance.grant_connect(grantee, db_user)

    def client_env(self, *, user: str, proxy: bool) -> dict[str, str]:
        """The environment of a component that logs in as ``user``, through the proxy (where
        there is one) or directly (``stacks.runtime_env.database_env``)."""
        via_proxy = proxy and self.proxy is not None
        return database_env(
            host=self.proxy_host if via_proxy else self.host,
            port=str(POSTGRES_PORT) if via_proxy else self.port,
            name=self.database_name,
            user=user,
            proxy=via_proxy,
        )

    @property
    def proxy_host(self) -> str:
        assert self.proxy is not None, "no RDS Proxy in this environment (database.proxy)"
        return self.proxy.endpoint

    @property
    def host(self) -> str:
        return self.instance.db_instance_endpoint_address

    @property
    def port(self) -> str:
        return self.instance.db_instance_endpoint_port


class DatabaseStack(OffloadStack):
    """RDS PostgreSQL, its credentials and rotation, and RDS Proxy (stateful)."""

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
        self.database = Database(
            self,
            "Database",
            config=config.database,
            instance_identifier=f"offload-{config.name}",
            vpc=network.vpc,
            subnets=network.data_subnets,
            proxy_clients=[network.lambdas_sg],
            direct_clients=[network.workers_sg, network.migrations_sg],
            log_retention=config.log_retention,
            removal_policy=self.stateful_removal_policy,
            deletion_protection=config.retain_stateful_resources,
            proxy_users=tuple(
                database_user(config.database.schema, component) for component in PROXIED
            ),
        )
