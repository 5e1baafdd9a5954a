"""RDS PostgreSQL, credentials rotation, RDS Proxy, and the migrations custom resource."""

from __future__ import annotations

import json
from pathlib import Path

from offload.settings import DATABASE_CA_FILE
from stacks.migrations import migrations_hash
from tests.infra.conftest import Synth


def test_postgres_16_pinned_encrypted_private(each_env: Synth) -> None:
    db = each_env.one(each_env.stacks.database, "AWS::RDS::DBInstance")
    assert db["Engine"] == "postgres"
    assert db["EngineVersion"].startswith("16.") and db["EngineVersion"].count(".") == 1
    assert db["AutoMinorVersionUpgrade"] is False
    assert db["StorageEncrypted"] is True
    assert db["PubliclyAccessible"] is False
    assert db["BackupRetentionPeriod"] >= 1
    group = each_env.one(each_env.stacks.database, "AWS::RDS::DBSubnetGroup")
    assert all("DataSubnet" in json.dumps(subnet) for subnet in group["SubnetIds"])


def test_tls_is_required(each_env: Synth) -> None:
    params = each_env.one(each_env.stacks.database, "AWS::RDS::DBParameterGroup")
    assert params["Parameters"]["rds.force_ssl"] == "1"


def test_rds_proxy_in_prod_none_in_dev(dev: Synth, prod: Synth) -> None:
    """database.proxy: prod has RDS Proxy (TLS, IAM), dev none (its Lambdas go straight to
    the instance: test_stacks_api.py, test_connection_budget.py)."""
    dev.template(dev.stacks.database).resource_count_is("AWS::RDS::DBProxy", 0)
    dev.template(dev.stacks.database).resource_count_is("AWS::RDS::DBProxyTargetGroup", 0)
    proxy = prod.one(prod.stacks.database, "AWS::RDS::DBProxy")
    assert proxy["RequireTLS"] is True
    assert proxy["EngineFamily"] == "POSTGRESQL"


def test_iam_authentication_end_to_end(each_env: Synth) -> None:
    """Clients log in with IAM tokens, to the instance and through the proxy, which holds no
    secret: the master password serves only the migrations and its rotation."""
    db = each_env.one(each_env.stacks.database, "AWS::RDS::DBInstance")
    assert db["EnableIAMDatabaseAuthentication"] is True
    if each_env.env == "dev":
        return  # no proxy (test_rds_proxy_in_prod_none_in_dev)
    proxy = each_env.one(each_env.stacks.database, "AWS::RDS::DBProxy")
    assert proxy["DefaultAuthScheme"] == "IAM_AUTH"
    assert all(auth.get("AuthScheme") != "SECRETS" for auth in proxy.get("Auth", []))
    assert "Secret" not in json.dumps(proxy)
    # The proxy logs in to the instance as the Lambdas' users, and only as them.
    role = proxy["RoleArn"]["Fn::GetAtt"][0]
    [policy] = [
        p["Properties"]
        for p in each_env.resources(each_env.stacks.database, "AWS::IAM::Policy").values()
        if {"Ref": role} in p["Properties"]["Roles"]
    ]
    [statement] = policy["PolicyDocument"]["Statement"]
    assert statement["Action"] == "rds-db:connect"
    users = sorted(json.dumps(arn).rsplit("/", 1)[1].split('"')[0] for arn in statement["Resource"])
    assert users == ["offload_api", "offload_enqueue", "offload_reconciler"]
    assert all("DbiResourceId" in json.dumps(arn) for arn in statement["Resource"])


def test_only_the_migrations_function_can_read_the_master_secret(dev: Synth) -> None:
    readers = []
    for stack in dev.stacks.all():
        for policy in dev.resources(stack, "AWS::IAM::Policy").values():
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
                if "DatabaseInstanceSecret" in json.dumps(statement["Resource"]):
                    readers.append((stack.stack_name, json.dumps(policy["Properties"]["Roles"])))
    assert readers and all("Migrations" in roles for _, roles in readers), readers
    for stack in dev.stacks.all():
        for resource in dev.resources(stack, "AWS::Lambda::Function").values():
            env = resource["Properties"].get("Environment", {}).get("Variables", {})
            if "DATABASE_SECRET_ARN" in env:
                assert resource["Properties"]["Handler"] == "lambdas.migrate.handler"
        for resource in dev.resources(stack, "AWS::ECS::TaskDefinition").values():
            assert "DatabaseInstanceSecret" not in json.dumps(resource)


def test_the_stacks_name_the_database_users_as_the_migrations_make_them() -> None:
    from offload.db.roles import COMPONENTS, role_name
    from stacks.runtime_env import database_user

    for component in COMPONENTS:
        assert database_user("offload", component) == role_name("offload", component)


def test_multi_az_backups_and_deletion_protection_in_prod(dev: Synth, prod: Synth) -> None:
    db = dev.one(dev.stacks.database, "AWS::RDS::DBInstance")
    assert (db["MultiAZ"], db["DeletionProtection"]) == (False, False)
    db = prod.one(prod.stacks.database, "AWS::RDS::DBInstance")
    assert (db["MultiAZ"], db["DeletionProtection"], db["BackupRetentionPeriod"]) == (
        True,
        True,
        14,
    )
    instance = prod.resources(prod.stacks.database, "AWS::RDS::DBInstance")
    assert next(iter(instance.values()))["DeletionPolicy"] == "Snapshot"
    assert prod.stacks.database.termination_protection is True


def test_generated_credentials_are_rotated(each_env: Synth) -> None:
    stack = each_env.stacks.database
    secret = each_env.one(stack, "AWS::SecretsManager::Secret")
    assert "GenerateSecretString" in secret
    rotation = each_env.one(stack, "AWS::SecretsManager::RotationSchedule")
    assert rotation["RotationRules"]["ScheduleExpression"] == "rate(30 days)"


def test_only_the_proxy_and_workers_reach_the_instance(dev: Synth, prod: Synth) -> None:
    """prod: proxy, workers, migrations, rotation -> instance; Lambdas -> proxy, never the
    instance. dev (no proxy): the Lambdas -> instance instead."""
    for synth, with_proxy in ((prod, True), (dev, False)):
        stack = synth.stacks.database
        ingress = [
            r["Properties"]
            for r in synth.resources(stack, "AWS::EC2::SecurityGroupIngress").values()
        ]
        for rule in ingress:
            assert "CidrIp" not in rule
            port = rule["FromPort"]
            assert port == 5432 or port == {"Fn::GetAtt": [port["Fn::GetAtt"][0], "Endpoint.Port"]}
        sources = " ".join(json.dumps(r["SourceSecurityGroupId"]) for r in ingress)
        assert "WorkersSecurityGroup" in sources
        assert "LambdasSecurityGroup" in sources
        assert ("ProxySecurityGroup" in sources) is with_proxy
        assert "RotationSingleUserSecurityGroup" in sources
        assert "MigrationsSecurityGroup" in sources
        assert len(ingress) == (5 if with_proxy else 4)  # the proxy -> instance rule
        for rule in ingress:
            if "LambdasSecurityGroup" in json.dumps(rule["SourceSecurityGroupId"]):
                target = json.dumps(rule["GroupId"])
                assert ("ProxySecurityGroup" in target) is with_proxy, synth.env


def test_migrations_run_on_deploy_and_when_a_migration_changes(dev: Synth) -> None:
    stack = dev.stacks.migrations
    resource = dev.one(stack, "Custom::OffloadSchemaMigrations")
    assert resource["MigrationsHash"] == migrations_hash()
    assert resource["Schema"] == "offload"
    assert resource["SchemaFromRole"] == "true"
    functions = dev.resources(stack, "AWS::Lambda::Function")
    [migrate] = [
        f for f in functions.values() if f["Properties"]["Handler"] == "lambdas.migrate.handler"
    ]
    env = migrate["Properties"]["Environment"]["Variables"]
    # the master user, straight to the instance (the proxy takes IAM logins only)
    assert {"DATABASE_SECRET_ARN", "OFFLOAD_DB_SCHEMA"} <= set(env)
    assert "DATABASE_PROXY_HOST" not in env
    assert env["OFFLOAD_DB_ROLE_PREFIX"] == "offload" == resource["RolePrefix"]
    assert "MigrationsSecurityGroup" in json.dumps(migrate["Properties"]["VpcConfig"])


def test_new_code_deploys_after_the_migrations(dev: Synth) -> None:
    stacks = dev.stacks
    assert stacks.migrations in stacks.api.dependencies
    assert stacks.migrations in stacks.workers.dependencies
    assert stacks.database in stacks.migrations.dependencies


def test_migrations_hash_follows_the_files(tmp_path) -> None:
    roles = tmp_path / "roles.py"
    roles.write_text("GRANTS = {}")
    (tmp_path / "0001_a.sql").write_text("create table a ();")
    before = migrations_hash(tmp_path, roles)
    (tmp_path / "0002_b.sql").write_text("create table b ();")
    after = migrations_hash(tmp_path, roles)
    assert after != before
    roles.write_text("GRANTS = {'api': {}}")  # a grant changed: the roles are updated
    assert migrations_hash(tmp_path, roles) != after


def test_every_database_client_verifies_the_server(each_env: Synth) -> None:
    """Every Lambda and the worker that reach PostgreSQL connect with verify-full, against the
    CA file the runtime ships (no other set): the proxy's name for the Lambdas, the instance's
    for the workers, each checked against its certificate."""
    clients: list[dict] = []
    for stack in each_env.stacks.all():
        for function in each_env.resources(stack, "AWS::Lambda::Function").values():
            env = function["Properties"].get("Environment", {}).get("Variables", {})
            if "DATABASE_SECRET_ARN" in env or "DATABASE_IAM_USER" in env:
                clients.append(env)
    [task] = each_env.resources(each_env.stacks.workers, "AWS::ECS::TaskDefinition").values()
    [worker] = task["Properties"]["ContainerDefinitions"]
    clients.append({e["Name"]: e["Value"] for e in worker["Environment"]})
    # the API's functions, the migrations, the worker
    assert len(clients) >= 3
    for env in clients:
        assert env["DATABASE_SSLMODE"] == "verify-full"
        assert "DATABASE_SSLROOTCERT" not in env  # the shipped roots (offload/db/ca/)
        assert "DATABASE_URL" not in env


def test_the_instance_certificate_is_under_a_root_the_runtime_ships(each_env: Synth) -> None:
    db = each_env.one(each_env.stacks.database, "AWS::RDS::DBInstance")
    assert db["CACertificateIdentifier"] == "rds-ca-rsa2048-g1"
    shipped = Path(DATABASE_CA_FILE).read_text(encoding="ascii")
    for region in ("us-east-1", "eu-west-1", "eu-central-1", "ap-northeast-1"):
        assert f"# Amazon RDS {region} Root CA RSA2048 G1\n" in shipped, region
