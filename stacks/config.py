"""Per-environment settings of the CDK app, read from ``cdk.json`` context.

``cdk.json`` holds one block per environment under ``offload:environments``; the environment
is chosen with ``-c env=dev`` (or ``-c offload:env=prod``; default ``dev``). Every key is
required and unknown keys are refused, so a typo in ``cdk.json`` fails synth instead of
silently falling back to a default. Nothing here is account specific: the stacks are
environment-agnostic and synth never needs credentials.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Node

ENVIRONMENTS_KEY = "offload:environments"
ENV_KEYS = ("env", "offload:env")
DEFAULT_ENV = "dev"
SKIP_BUNDLING_KEY = "offload:skipBundling"

_RETENTION = {
    1: logs.RetentionDays.ONE_DAY,
    3: logs.RetentionDays.THREE_DAYS,
    5: logs.RetentionDays.FIVE_DAYS,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    120: logs.RetentionDays.FOUR_MONTHS,
    150: logs.RetentionDays.FIVE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
    400: logs.RetentionDays.THIRTEEN_MONTHS,
    545: logs.RetentionDays.EIGHTEEN_MONTHS,
    731: logs.RetentionDays.TWO_YEARS,
}

_ARCHIVE_CLASSES = {
    "GLACIER_IR": s3.StorageClass.GLACIER_INSTANT_RETRIEVAL,
    "GLACIER": s3.StorageClass.GLACIER,
    "DEEP_ARCHIVE": s3.StorageClass.DEEP_ARCHIVE,
}


class ConfigError(ValueError):
    """cdk.json context is missing, misspelt or out of range."""


def log_retention(days: int) -> logs.RetentionDays:
    try:
        return _RETENTION[days]
    except KeyError:
        raise ConfigError(
            f"log retention of {days} days is not one CloudWatch Logs offers "
            f"(choose one of {sorted(_RETENTION)})"
        ) from None


@dataclass(frozen=True, kw_only=True)
class NetworkConfig:
    cidr: str
    max_azs: int
    # 0: no NAT gateway (stacks/network.py: the workers in the public subnets with a public IP,
    # the Lambdas in isolated subnets with the S3 gateway endpoint and one Secrets Manager
    # endpoint; docs/deploy.md "Egress")
    nat_gateways: int
    flow_log_retention_days: int
    # Interface endpoints (ECR, Logs, Secrets Manager, SQS, CloudWatch) in every AZ: $0.01 an
    # hour each per AZ. Off, the same calls go out through the NAT gateway(s).
    interface_endpoints: bool

    def validate(self) -> None:
        if self.max_azs < 2:
            raise ConfigError("network.maxAzs must be >= 2 (Multi-AZ data stores need two)")
        if not 0 <= self.nat_gateways <= self.max_azs:
            raise ConfigError("network.natGateways must be between 0 and maxAzs")
        log_retention(self.flow_log_retention_days)


@dataclass(frozen=True, kw_only=True)
class StorageConfig:
    uploads_archive_after_days: int
    processed_archive_after_days: int
    archive_storage_class: str
    abort_incomplete_multipart_after_days: int
    noncurrent_version_expiration_days: int
    access_log_retention_days: int
    events_max_receive_count: int

    @property
    def archive_class(self) -> s3.StorageClass:
        return _ARCHIVE_CLASSES[self.archive_storage_class]

    def validate(self) -> None:
        if self.archive_storage_class not in _ARCHIVE_CLASSES:
            raise ConfigError(
                f"storage.archiveStorageClass must be one of {list(_ARCHIVE_CLASSES)}"
            )
        for name in ("uploads_archive_after_days", "processed_archive_after_days"):
            if getattr(self, name) < 1:
                raise ConfigError(f"storage.{name} must be >= 1")
        if self.abort_incomplete_multipart_after_days < 1:
            raise ConfigError("storage.abortIncompleteMultipartAfterDays must be >= 1")
        if self.noncurrent_version_expiration_days < 1:
            raise ConfigError("storage.noncurrentVersionExpirationDays must be >= 1")
        if self.events_max_receive_count < 1:
            raise ConfigError("storage.eventsMaxReceiveCount must be >= 1")


@dataclass(frozen=True, kw_only=True)
class RedisConfig:
    engine_version: str
    parameter_group_family: str
    node_type: str
    nodes: int
    snapshot_retention_days: int

    @property
    def multi_az(self) -> bool:
        """Automatic failover and Multi-AZ need a replica: two nodes or more."""
        return self.nodes >= 2

    def validate(self) -> None:
        if not 1 <= self.nodes <= 6:
            raise ConfigError("redis.nodes must be between 1 and 6 (a primary and replicas)")
        if not self.engine_version.startswith("7."):
            raise ConfigError("redis.engineVersion must be a Redis OSS 7.x version")


@dataclass(frozen=True, kw_only=True)
class DatabaseConfig:
    instance_type: str
    allocated_storage_gib: int
    max_allocated_storage_gib: int
    multi_az: bool
    backup_retention_days: int
    rotation_days: int
    database_name: str
    schema: str
    # RDS Proxy in front of the instance for the Lambdas (billed per vCPU of the instance,
    # 2 at least). Off, the Lambdas connect to the instance directly, and their reserved
    # concurrency (api.apiReservedConcurrency) caps their connections.
    proxy: bool

    def validate(self) -> None:
        if self.backup_retention_days < 1:
            raise ConfigError("database.backupRetentionDays must be >= 1")
        if self.max_allocated_storage_gib < self.allocated_storage_gib:
            raise ConfigError("database.maxAllocatedStorageGib must be >= allocatedStorageGib")
        if not 1 <= self.rotation_days <= 365:
            raise ConfigError("database.rotationDays must be between 1 and 365")


@dataclass(frozen=True, kw_only=True)
class WorkersConfig:
    cpu: int
    memory_mib: int
    min_tasks: int
    max_tasks: int
    concurrency: int
    spot: bool
    scale_in_after_idle_minutes: int
    # Container Insights on the cluster (its metrics are billed per metric); the scaling reads
    # the tasks' own RunningTasks metric, so this only adds per-task/container views.
    container_insights: bool
    # The EventBridge bus an upload's final state is published on (offload.upload_events):
    # "default" (the account's default bus) or the name of a bus the deployer made.
    event_bus_name: str

    def validate(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9._\-/]{1,256}", self.event_bus_name):
            raise ConfigError("workers.eventBusName must be an EventBridge bus name")
        if self.min_tasks < 0 or self.max_tasks < max(1, self.min_tasks):
            raise ConfigError("workers: need 0 <= minTasks <= maxTasks and maxTasks >= 1")
        if self.concurrency < 1:
            raise ConfigError("workers.concurrency must be >= 1")
        if self.scale_in_after_idle_minutes < 1:
            raise ConfigError("workers.scaleInAfterIdleMinutes must be >= 1")


@dataclass(frozen=True, kw_only=True)
class PipelinesConfig:
    """What every runtime component must agree on about jobs (docs/settings.md): the size
    bands of job priorities (``OFFLOAD_PRIORITY_SIZE_BANDS``) and the per-step limits
    (``OFFLOAD_STEP_LIMITS``, as JSON). Their shapes are checked here; the values are checked
    again by each component at start (offload.priorities, offload.step_limits)."""

    priority_size_bands: str
    step_limits: dict[str, Any]

    def validate(self) -> None:
        if not isinstance(self.priority_size_bands, str) or not self.priority_size_bands.strip():
            raise ConfigError("pipelines.prioritySizeBands must be sizes ('16MiB,4GiB') or 'none'")
        if not isinstance(self.step_limits, dict):
            raise ConfigError("pipelines.stepLimits must be an object of step name -> limits")
        for step, limits in self.step_limits.items():
            if limits is not None and not (
                isinstance(limits, dict)
                and all(type(value) is int and value >= 1 for value in limits.values())
            ):
                raise ConfigError(
                    f"pipelines.stepLimits.{step} must be null or an object of positive integers"
                )


@dataclass(frozen=True, kw_only=True)
class ApiConfig:
    throttle_rate_limit: int
    throttle_burst_limit: int
    enqueue_reserved_concurrency: int
    enqueue_batch_size: int
    # The API function's reserved concurrency: required without RDS Proxy (each of its
    # containers holds one PostgreSQL connection), null (no reservation) behind the proxy.
    # The one optional key: CDK drops null context values, so null reads as absent.
    api_reserved_concurrency: int | None = None

    def validate(self) -> None:
        if self.api_reserved_concurrency is not None and self.api_reserved_concurrency < 1:
            raise ConfigError("api.apiReservedConcurrency must be >= 1 or null")
        if self.enqueue_reserved_concurrency < 1:
            raise ConfigError("api.enqueueReservedConcurrency must be >= 1")
        if not 1 <= self.enqueue_batch_size <= 10_000:
            raise ConfigError("api.enqueueBatchSize must be between 1 and 10000")


@dataclass(frozen=True, kw_only=True)
class AuthConfig:
    threat_protection: bool

    def validate(self) -> None:
        pass


@dataclass(frozen=True, kw_only=True)
class ObservabilityConfig:
    log_retention_days: int
    alarm_email: str
    oldest_waiting_age_alarm_seconds: int
    # The CloudWatch dashboard ($3 a month); the alarms do not depend on it.
    dashboard: bool

    def validate(self) -> None:
        log_retention(self.log_retention_days)


@dataclass(frozen=True, kw_only=True)
class EnvConfig:
    name: str
    termination_protection: bool
    retain_stateful_resources: bool
    web_origins: tuple[str, ...]
    network: NetworkConfig
    storage: StorageConfig
    redis: RedisConfig
    database: DatabaseConfig
    workers: WorkersConfig
    api: ApiConfig
    auth: AuthConfig
    observability: ObservabilityConfig
    pipelines: PipelinesConfig

    @property
    def is_prod(self) -> bool:
        return self.name == "prod"

    @property
    def log_retention(self) -> logs.RetentionDays:
        return log_retention(self.observability.log_retention_days)

    def validate(self) -> None:
        if not self.web_origins:
            raise ConfigError("webOrigins must name at least one origin (CORS)")
        if len(self.web_origins) > 1:
            # API Gateway's own error answers (401 from the authorizer, 429, 5xx) carry one
            # fixed Access-Control-Allow-Origin: a page on a second origin could not read them.
            raise ConfigError("webOrigins must name exactly one origin (the web page's)")
        if not self.database.proxy and self.api.api_reserved_concurrency is None:
            raise ConfigError(
                "api.apiReservedConcurrency is required when database.proxy is false: without "
                "RDS Proxy the API function's concurrency is what caps its database connections"
            )
        for origin in self.web_origins:
            if origin == "*" or not origin.startswith(("https://", "http://localhost")):
                raise ConfigError(f"web origin {origin!r} must be https:// (or http://localhost)")
        for section in (
            self.network,
            self.storage,
            self.redis,
            self.database,
            self.workers,
            self.api,
            self.auth,
            self.observability,
            self.pipelines,
        ):
            section.validate()


def _snake(camel: str) -> str:
    out = []
    for char in camel:
        if char.isupper():
            out.append("_" + char.lower())
        else:
            out.append(char)
    return "".join(out)


T = TypeVar("T")


def _build(cls: type[T], raw: Any, where: str) -> T:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be an object")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = _snake(key)
        if name not in fields:
            raise ConfigError(f"unknown key {where}.{key}")
        values[name] = value
    missing = [
        n
        for n, f in fields.items()
        if n not in values and n != "name" and f.default is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where} is missing {missing}")
    return cls(**values)


_SECTIONS = {
    "network": NetworkConfig,
    "storage": StorageConfig,
    "redis": RedisConfig,
    "database": DatabaseConfig,
    "workers": WorkersConfig,
    "api": ApiConfig,
    "auth": AuthConfig,
    "observability": ObservabilityConfig,
    "pipelines": PipelinesConfig,
}


def parse(name: str, raw: Any) -> EnvConfig:
    """One environment's block of ``offload:environments`` as a validated EnvConfig."""
    if not isinstance(raw, dict):
        raise ConfigError(f"environment {name!r} must be an object")
    top = dict(raw)
    sections = {
        key: _build(cls, top.pop(key, None), f"{name}.{key}") for key, cls in _SECTIONS.items()
    }
    if "webOrigins" in top:
        top["webOrigins"] = tuple(top["webOrigins"])
    rest = _build(_TopLevel, top, name)
    config = EnvConfig(name=name, **dataclasses.asdict(rest), **sections)
    config.validate()
    return config


@dataclass(frozen=True, kw_only=True)
class _TopLevel:
    termination_protection: bool
    retain_stateful_resources: bool
    web_origins: tuple[str, ...]


def env_name(context: Callable[[str], Any]) -> str:
    """The environment the context names (``context`` looks a key up: ``Node.try_get_context``
    or a dict's ``get``); ``dev`` when it names none."""
    for key in ENV_KEYS:
        value = context(key)
        if value:
            return str(value)
    return DEFAULT_ENV


def load(node: Node) -> EnvConfig:
    """The configuration of the environment chosen by context (``-c env=NAME``)."""
    environments = node.try_get_context(ENVIRONMENTS_KEY)
    if not isinstance(environments, dict) or not environments:
        raise ConfigError(f"cdk.json context has no {ENVIRONMENTS_KEY!r} block")
    name = env_name(node.try_get_context)
    if name not in environments:
        raise ConfigError(f"unknown environment {name!r}: cdk.json defines {sorted(environments)}")
    return parse(name, environments[name])


def skip_bundling(node: Node) -> bool:
    value = node.try_get_context(SKIP_BUNDLING_KEY)
    return value is True or str(value).lower() == "true"
