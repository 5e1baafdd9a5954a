"""What every stack of the app shares: naming, the environment's config, termination
protection for the stateful ones."""

from __future__ import annotations

from typing import Any

from aws_cdk import RemovalPolicy, Stack, Tags
from constructs import Construct

from stacks.config import EnvConfig

# Resource types whose CloudFormation schema has no Tags (CDK's tag aspect would add them).
UNTAGGABLE = ["AWS::RDS::DBProxyTargetGroup"]


class OffloadStack(Stack):
    """A thin stack: it only composes constructs. ``stateful`` stacks (bucket, ElastiCache,
    RDS, user pool) get termination protection where the environment asks for it; their
    construct ids must never be renamed (that would replace the resource)."""

    stateful = False

    def __init__(self, scope: Construct, id: str, *, config: EnvConfig, **kwargs: Any) -> None:
        super().__init__(
            scope,
            id,
            termination_protection=self.stateful and config.termination_protection,
            description=f"offload ({config.name}): {self.describe()}",
            **kwargs,
        )
        self.config = config
        for key, value in (("Project", "offload"), ("Environment", config.name)):
            Tags.of(self).add(key, value, exclude_resource_types=UNTAGGABLE)

    @classmethod
    def describe(cls) -> str:
        return (cls.__doc__ or cls.__name__).strip().splitlines()[0]

    @property
    def stateful_removal_policy(self) -> RemovalPolicy:
        return (
            RemovalPolicy.RETAIN if self.config.retain_stateful_resources else RemovalPolicy.DESTROY
        )
