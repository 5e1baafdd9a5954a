"""ElastiCache: noeviction, TLS, encryption at rest, RBAC users per role with IAM
authentication (no AUTH token), Multi-AZ in prod, isolated subnets, a security group open only
to the workloads."""

from __future__ import annotations

import json

from offload.settings import Settings
from stacks import redis_acl
from stacks.runtime_env import QUEUE_PREFIX
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


def test_no_auth_token_a_user_group_of_role_users_instead(each_env: Synth) -> None:
    stack = each_env.stacks.queue
    env_name = each_env.env
    rg = each_env.one(stack, "AWS::ElastiCache::ReplicationGroup")
    assert "AuthToken" not in rg
    assert not each_env.resources(stack, "AWS::SecretsManager::Secret")
    group_id = next(iter(each_env.resources(stack, "AWS::ElastiCache::UserGroup")))
    assert rg["UserGroupIds"] == [{"Ref": group_id}]
    group = each_env.one(stack, "AWS::ElastiCache::UserGroup")
    users = each_env.resources(stack, "AWS::ElastiCache::User")
    assert sorted(group["UserIds"], key=json.dumps) == sorted(
        ({"Ref": logical} for logical in users), key=json.dumps
    )
    by_name = {u["Properties"]["UserName"]: u["Properties"] for u in users.values()}
    assert set(by_name) == {"default"} | {f"offload-{env_name}-{r}" for r in redis_acl.ROLES}
    for role in redis_acl.ROLES:
        user = by_name[f"offload-{env_name}-{role}"]
        assert user["UserId"] == user["UserName"]  # IAM authentication requires it
        assert user["AuthenticationMode"] == {"Type": "iam"}
        # the prefix the runtime makes of the stacks' OFFLOAD_QUEUE_PREFIX
        prefix = Settings.from_env({"OFFLOAD_QUEUE_PREFIX": QUEUE_PREFIX}).queue_prefix
        assert user["AccessString"] == redis_acl.access_string(role, prefix)
        assert f" ~{prefix}:* " in user["AccessString"]
        assert user["Engine"] == "redis"
    default = by_name["default"]
    assert default["AccessString"] == "off -@all"
    assert default["UserId"] == f"offload-{env_name}-default"  # "default" is ElastiCache's own
    assert "Passwords" not in default and "Passwords" not in json.dumps(group)


def _connect_grants(synth: Synth, stack) -> dict[str, str]:
    """Each policy's elasticache:Connect resources, by policy logical id."""
    found = {}
    for logical, policy in synth.resources(stack, "AWS::IAM::Policy").items():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement["Action"]
            if "elasticache:Connect" in ([actions] if isinstance(actions, str) else actions):
                assert actions == "elasticache:Connect"
                found[logical] = json.dumps(statement["Resource"])
    return found


def test_each_role_connects_as_its_own_iam_user(dev: Synth) -> None:
    """elasticache:Connect on the replication group and the role's own user, nothing else:
    the workers' task role as the worker, each Lambda's role as the producer; nobody may log
    in as the operator yet (the ops view will be granted it)."""
    workers = _connect_grants(dev, dev.stacks.workers)
    api = _connect_grants(dev, dev.stacks.api)
    assert len(workers) == 1 and len(api) == 4
    for logical, resources in workers.items():
        assert "TaskRole" in logical
        assert "UserWorker" in resources and "ReplicationGroup" in resources
        assert "UserProducer" not in resources and "UserOperator" not in resources
    for resources in api.values():
        assert "UserProducer" in resources and "ReplicationGroup" in resources
        assert "UserWorker" not in resources and "UserOperator" not in resources
        assert ":replicationgroup:" in resources


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
