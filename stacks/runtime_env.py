"""The environment variables the runtime reads (``offload/settings.py``,
``lambdas/runtime.py``), as the stacks set them. One place, so the Lambdas and the workers
agree on the queue and the metrics."""

from __future__ import annotations

import json

from stacks.config import PipelinesConfig
from stacks.metrics import NAMESPACE

QUEUE_NAME = "uploads"
QUEUE_PREFIX = "offload"  # settings wrap it as the hash tag "{offload}" (cluster-mode safe)
# PostgreSQL over TLS that checks the server: its certificate must chain to the AWS roots the
# runtime ships (offload/db/ca/, the default DATABASE_SSLROOTCERT) and name the host connected
# to, the RDS Proxy endpoint (Lambdas) or the instance (workers).
DATABASE_SSLMODE = "verify-full"


def database_tls_env() -> dict[str, str]:
    """What every component that reaches PostgreSQL sets beside its credentials."""
    return {"DATABASE_SSLMODE": DATABASE_SSLMODE}


def queue_env(*, redis_url: str, schema: str, log_level: str = "INFO") -> dict[str, str]:
    """What every runtime component shares: the queue, the schema, metrics, logs."""
    return {
        "REDIS_URL": redis_url,
        "OFFLOAD_QUEUE_NAME": QUEUE_NAME,
        "OFFLOAD_QUEUE_PREFIX": QUEUE_PREFIX,
        "OFFLOAD_DB_SCHEMA": schema,
        "OFFLOAD_METRICS_NAMESPACE": NAMESPACE,
        "LOG_LEVEL": log_level,
    }


def database_user(schema: str, component: str) -> str:
    """The database role a component logs in as: ``offload.db.roles.role_name`` with the
    schema's name as prefix (the migrations function gets the same prefix,
    ``OFFLOAD_DB_ROLE_PREFIX``). Restated here, not imported: stacks import no runtime code;
    tests/infra/test_stacks_database.py checks the two agree."""
    return f"{schema}_{component}"


def database_env(*, host: str, port: str, name: str, user: str, proxy: bool) -> dict[str, str]:
    """How a runtime component reaches PostgreSQL: its own database user, an IAM token as the
    password (``offload.db.credentials.IamDatabaseUrl``), no secret. Behind RDS Proxy the
    schema comes from the role's default search_path (the proxy refuses startup options)."""
    env = {
        "DATABASE_HOST": host,
        "DATABASE_PORT": port,
        "DATABASE_NAME": name,
        "DATABASE_IAM_USER": user,
        **database_tls_env(),
    }
    if proxy:
        env["OFFLOAD_DB_SCHEMA_FROM_ROLE"] = "true"
    return env


def pipelines_env(config: PipelinesConfig) -> dict[str, str]:
    """Job priorities and per-step limits: every component that adds, runs, repairs or counts
    jobs needs the same values (producers route a limited step's jobs to its queue, workers
    consume and limit it, the reconciler and the queue metrics look at it)."""
    env = {"OFFLOAD_PRIORITY_SIZE_BANDS": config.priority_size_bands}
    if config.step_limits:
        env["OFFLOAD_STEP_LIMITS"] = json.dumps(config.step_limits, sort_keys=True)
    return env
