"""Schema migrations on deploy: a custom resource runs ``offload.db.migrate`` (the logic of
``python -m offload.db.migrate``) whenever a migration file or the database roles' grants
change. It is the one function that holds the master secret: it logs in to the instance
directly (RDS Proxy takes IAM logins only) and makes the components' own database roles
(``OFFLOAD_DB_ROLE_PREFIX``: ``offload.db.roles``), which every runtime component uses.

``MigrationsStack`` sits between the database and the code that uses it: the API and the
workers stacks depend on it, so CloudFormation applies the migrations before new Lambda code
or a new worker task definition is deployed. The migrations are idempotent and serialised by
an advisory lock, so a re-run (rollback, replay) is harmless.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from aws_cdk import CustomResource, Duration, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import custom_resources as cr
from constructs import Construct

from stacks.base import OffloadStack
from stacks.bundling import REPO_ROOT, lambda_code
from stacks.config import EnvConfig, skip_bundling
from stacks.database import Database
from stacks.functions import BASIC_EXECUTION_POLICY, arn_ref, python_function
from stacks.nag import acknowledge
from stacks.network import Network
from stacks.runtime_env import database_tls_env

MIGRATIONS_DIR = REPO_ROOT / "offload" / "db" / "migrations"
ROLES_MODULE = REPO_ROOT / "offload" / "db" / "roles.py"  # the roles' grants
HANDLER = "lambdas.migrate.handler"


def migrations_hash(directory: Path = MIGRATIONS_DIR, roles: Path = ROLES_MODULE) -> str:
    """Changes with any migration file or the roles' grants, so the custom resource runs
    again exactly then."""
    digest = hashlib.sha256()
    for path in [*sorted(directory.glob("*.sql")), roles]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


class SchemaMigrations(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        code: lambda_.Code,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        security_group: ec2.ISecurityGroup,
        database: Database,
        schema: str,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, id)
        self.function = python_function(
            self,
            "Function",
            code=code,
            handler=HANDLER,
            description="offload: apply PostgreSQL schema migrations (custom resource)",
            vpc=vpc,
            subnets=subnets,
            security_group=security_group,
            environment={
                # The master user, straight to the instance (the secret names its host).
                "DATABASE_SECRET_ARN": database.secret.secret_arn,
                **database_tls_env(),
                "OFFLOAD_DB_SCHEMA": schema,
                "OFFLOAD_DB_ROLE_PREFIX": schema,
                "LOG_LEVEL": "INFO",
            },
            log_retention=log_retention,
            timeout=Duration.minutes(10),
        )
        database.secret.grant_read(self.function)

        provider_logs = logs.LogGroup(
            self, "ProviderLogs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
        )
        self.provider = cr.Provider(
            self,
            "Provider",
            on_event_handler=self.function,
            log_group=provider_logs,
        )
        acknowledge(
            self.provider,
            f"AwsSolutions-IAM4[{BASIC_EXECUTION_POLICY}]",
            "CDK's custom-resource provider framework: the managed policy only lets it log.",
        )
        acknowledge(
            self.provider,
            f"AwsSolutions-IAM5[Resource::{arn_ref(self.function)}:*]",
            "CDK's provider framework may invoke any version of the migration function.",
        )

        self.resource = CustomResource(
            self,
            "Schema",
            service_token=self.provider.service_token,
            resource_type="Custom::OffloadSchemaMigrations",
            properties={
                "Schema": schema,
                "MigrationsHash": migrations_hash(),
                # The Lambdas reach PostgreSQL through RDS Proxy, which refuses libpq startup
                # options: the migration makes the schema each component role's default
                # search_path (offload.db.roles). Only markers here: a new property re-runs
                # the resource on existing deployments.
                "SchemaFromRole": "true",
                "RolePrefix": schema,
            },
        )


class MigrationsStack(OffloadStack):
    """Applies the PostgreSQL schema migrations before new code is deployed."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: EnvConfig,
        network: Network,
        database: Database,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, id, config=config, **kwargs)
        # One Code instance per stack (CDK's rule); the bundle itself is built once per synth.
        code = lambda_code(skip_bundling=skip_bundling(self.node))
        self.migrations = SchemaMigrations(
            self,
            "Migrations",
            code=code,
            vpc=network.vpc,
            subnets=network.app_subnets,
            security_group=network.migrations_sg,
            database=database,
            schema=config.database.schema,
            log_retention=config.log_retention,
        )
