"""The environment variables the runtime reads (``offload/settings.py``,
``lambdas/runtime.py``), as the stacks set them. One place, so the Lambdas and the workers
agree on the queue and the metrics."""

from __future__ import annotations

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
