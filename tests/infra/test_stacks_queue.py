"""ElastiCache: noeviction, TLS, encryption at rest, AUTH token from Secrets Manager, Multi-AZ
in prod, isolated subnets, a security group open only to the workloads."""

from __future__ import annotations

import json

from tests.infra.conftest import Synth


def test_parameter_group_sets_noeviction(each_env: Synth) -> None:
    group = each_env.one(each_env.stacks.queue, "AWS::ElastiCache::ParameterGroup")
    assert group["Properties"] == {"maxmemory-policy": "noeviction"}
    assert group["CacheParameterGroupFamily"] == "redis7"
    rg = each_env.one(each_env.stacks.queue, "AWS::ElastiCache::ReplicationGroup")
    assert "Parameters" in rg["CacheParameterGroupName"]["Ref"]


def test_tls_encryption_at_rest_and_engine(each_env: Synth) -> None:
    rg = each_env.one(each_env.stacks.queue, "AWS::ElastiCache::ReplicationGroup")
    assert rg["Engine"] == "redis"
    assert rg["EngineVersion"].startswith("7.")
    assert rg["TransitEncryptionEnabled"] is True
    assert rg["TransitEncryptionMode"] == "required"
    assert rg["AtRestEncryptionEnabled"] is True
    assert rg["Port"] == 6379


def test_auth_token_is_a_secrets_manager_reference_never_a_value(each_env: Synth) -> None:
    stack = each_env.stacks.queue
    rg = each_env.one(stack, "AWS::ElastiCache::ReplicationGroup")
    token = json.dumps(rg["AuthToken"])
    assert "{{resolve:secretsmanager:" in token
    assert "AuthToken" in token  # the generated secret below, by reference
    secret = each_env.one(stack, "AWS::SecretsManager::Secret")
    assert secret["GenerateSecretString"]["PasswordLength"] == 64
    assert "SecretString" not in secret


def test_multi_az_with_failover_only_in_prod(dev: Synth, prod: Synth) -> None:
    rg = dev.one(dev.stacks.queue, "AWS::ElastiCache::ReplicationGroup")
    assert (rg["NumCacheClusters"], rg["MultiAZEnabled"], rg["AutomaticFailoverEnabled"]) == (
        1,
        False,
        False,
    )
    rg = prod.one(prod.stacks.queue, "AWS::ElastiCache::ReplicationGroup")
    assert (rg["NumCacheClusters"], rg["MultiAZEnabled"], rg["AutomaticFailoverEnabled"]) == (
        2,
        True,
        True,
    )
    assert rg["SnapshotRetentionLimit"] == 7


def test_lives_in_the_isolated_subnets(each_env: Synth) -> None:
    group = each_env.one(each_env.stacks.queue, "AWS::ElastiCache::SubnetGroup")
    ids = [json.dumps(subnet) for subnet in group["SubnetIds"]]
    assert len(ids) == 2
    assert all("DataSubnet" in subnet for subnet in ids), ids


def test_security_group_admits_only_workers_and_lambdas_on_6379(each_env: Synth) -> None:
    stack = each_env.stacks.queue
    [group] = each_env.resources(stack, "AWS::EC2::SecurityGroup").values()
    inline = group["Properties"].get("SecurityGroupIngress", [])
    assert inline == []
    rules = [
        r["Properties"]
        for r in each_env.resources(stack, "AWS::EC2::SecurityGroupIngress").values()
    ]
    assert len(rules) == 2
    sources = sorted(json.dumps(rule["SourceSecurityGroupId"]) for rule in rules)
    assert "LambdasSecurityGroup" in sources[0]
    assert "WorkersSecurityGroup" in sources[1]
    for rule in rules:
        assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 6379, 6379)
        assert "CidrIp" not in rule


def test_stateful_stack_termination_protection(dev: Synth, prod: Synth) -> None:
    assert prod.stacks.queue.termination_protection is True
    assert dev.stacks.queue.termination_protection is False
    rg = prod.resources(prod.stacks.queue, "AWS::ElastiCache::ReplicationGroup")
    assert next(iter(rg.values()))["DeletionPolicy"] == "Snapshot"
