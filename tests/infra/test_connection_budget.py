"""Every PostgreSQL connection the deployed system can open fits the instance's
``max_connections``, computed from the synthesised templates and the instance class.

Who connects, at most (restated from the runtime, which this test does not run):

- each Lambda container: one connection (lambdas/runtime.py: a pool of one). Without RDS Proxy
  a function's containers are capped by its reserved concurrency, and each is counted twice:
  a container Lambda retires leaves its connection open until the server notices (TCP
  keepalive), while its replacement opens a new one. Behind the proxy, the proxy's own pool
  (``MaxConnectionsPercent`` of max_connections) is what reaches the instance;
- each worker task: its pool (``OFFLOAD_CONCURRENCY`` + 1, fargate_worker/worker.py) and the
  system jobs' connection (fargate_worker/system_jobs.py), times the scaling maximum;
- the migrations function and the rotation function: one each (they run on deploys and
  rotations, never more than one at a time: CloudFormation and Secrets Manager serialise them);
- RDS keeps ``superuser_reserved_connections`` (3) and ``rds.rds_superuser_reserved_connections``
  (2) for administrators.

RDS PostgreSQL's default ``max_connections`` is ``LEAST(DBInstanceClassMemory / 9531392,
5000)``; ``DBInstanceClassMemory`` is the class's memory less what RDS keeps for the OS and its
agents, taken here as 75 % of it (a conservative figure: RDS reports 81-87 connections on 1 GiB
classes, and 75 % gives 84).
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from stacks.config import ConfigError, parse
from stacks.cost import prices
from tests.infra.conftest import Synth, file_context

RESERVED_FOR_ADMINS = 3 + 2
USABLE_MEMORY = 0.75
RETIRED_CONTAINER_FACTOR = 2
ONE_SHOT_FUNCTIONS = 2  # migrations, rotation


def max_connections(instance_class: str) -> int:
    memory = float(prices.load().get("rds", "instanceMemoryGib", instance_class)) * 1024**3
    return min(math.floor(memory * USABLE_MEMORY / 9531392), 5000)


def lambda_connections(synth: Synth) -> int:
    """What the Lambdas of the API stack can hold open on the instance."""
    proxies = list(synth.resources(synth.stacks.database, "AWS::RDS::DBProxy").values())
    if proxies:
        [target_group] = synth.resources(
            synth.stacks.database, "AWS::RDS::DBProxyTargetGroup"
        ).values()
        percent = target_group["Properties"]["ConnectionPoolConfigurationInfo"][
            "MaxConnectionsPercent"
        ]
        db = synth.one(synth.stacks.database, "AWS::RDS::DBInstance")
        return math.ceil(max_connections(db["DBInstanceClass"]) * percent / 100)
    total = 0
    for function in synth.resources(synth.stacks.api, "AWS::Lambda::Function").values():
        props: dict[str, Any] = function["Properties"]
        if "DATABASE_IAM_USER" not in props["Environment"]["Variables"]:
            continue
        reserved = props.get("ReservedConcurrentExecutions")
        assert reserved, f"{props['Handler']} reaches PostgreSQL directly with no reservation"
        total += RETIRED_CONTAINER_FACTOR * reserved
    return total


def worker_connections(synth: Synth) -> int:
    [task] = synth.resources(synth.stacks.workers, "AWS::ECS::TaskDefinition").values()
    [container] = task["Properties"]["ContainerDefinitions"]
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    per_task = int(env["OFFLOAD_CONCURRENCY"]) + 1 + 1
    [target] = synth.resources(
        synth.stacks.workers, "AWS::ApplicationAutoScaling::ScalableTarget"
    ).values()
    return int(target["Properties"]["MaxCapacity"]) * per_task


def test_every_connection_fits_the_instance(each_env: Synth) -> None:
    db = each_env.one(each_env.stacks.database, "AWS::RDS::DBInstance")
    limit = max_connections(db["DBInstanceClass"]) - RESERVED_FOR_ADMINS
    needed = lambda_connections(each_env) + worker_connections(each_env) + ONE_SHOT_FUNCTIONS
    assert needed <= limit, (each_env.env, needed, limit)


def test_the_budget_is_the_one_the_environments_were_sized_for(dev: Synth, prod: Synth) -> None:
    """The figures behind docs/deploy.md's connection sentence, so a change that eats the
    margin is seen: dev (db.t4g.micro, no proxy) 84 - 5 available, 2 x (10 + 2 + 1)
    Lambda (api, enqueue, reconciler) + 3 x 4 worker + 2 = 40; prod (db.m7g.large, proxy at
    80 %) 675 - 5 available, 540 proxy + 20 x 4 worker + 2 = 622."""
    assert max_connections("db.t4g.micro") == 84
    assert lambda_connections(dev) == 26 and worker_connections(dev) == 12
    assert max_connections("db.m7g.large") == 675
    assert lambda_connections(prod) == 540 and worker_connections(prod) == 80


def test_a_direct_lambda_without_a_reservation_is_refused() -> None:
    """cdk.json cannot turn the proxy off without capping the API function."""
    dev = file_context()["offload:environments"]["dev"]
    broken = {**dev, "api": {**dev["api"], "apiReservedConcurrency": None}}
    with pytest.raises(ConfigError, match="apiReservedConcurrency is required"):
        parse("dev", broken)
