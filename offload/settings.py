"""Runtime settings, read once from the environment.

Both runtimes (Lambda and the Fargate worker) are configured only through environment
variables, so the CDK stacks, the local stack and the tests all configure them the same way.
Every variable is documented in docs/settings.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from offload import schedules as _schedules
from offload.priorities import parse_size_bands
from offload.schedules import Schedule
from offload.step_limits import StepLimitOverrides, parse_step_limits

MiB = 1 << 20
GiB = 1 << 30
# OFFLOAD_PART_SIZE_MIB bounds: S3 parts (all but the last) are 5 MiB to 5 GiB.
PART_SIZE_MIB_MIN = 5
PART_SIZE_MIB_MAX = 5 * 1024


# libpq's sslmode values. Only verify-full checks that the server holds a certificate for the
# host connected to, from a CA we trust: what the deployed runtimes use (the default).
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# The CAs the deployed database endpoints chain to, shipped inside the package so that the
# Lambda bundle and the worker image both carry it: RDS's G1 roots (the instance, which the
# workers reach directly) and Amazon Trust Services' roots (RDS Proxy, which the Lambdas reach).
# offload/db/ca/README.md says where it comes from and how it is refreshed.
DATABASE_CA_FILE = str(Path(__file__).resolve().parent / "db" / "ca" / "aws-database-roots.pem")


# BullMQ's removeOnComplete/removeOnFail: keep all (False), none (True), the last N, or by
# {"age": seconds, "count": n}.
Retention = bool | int | dict[str, int]


@dataclass(frozen=True)
class UploadQuota:
    """One tier's per-user limits on uploads (``offload.quotas``); 0: no limit. The bytes are
    the announced sizes of the user's open uploads: what S3 may still be asked to park."""

    open_uploads: int
    bytes_in_flight: int
    uploads_per_hour: int


# Tier defaults (docs/settings.md). A standard user can still send the largest upload
# (OFFLOAD_MAX_UPLOAD_BYTES, 50 GiB) with a few small ones beside it.
STANDARD_QUOTA = UploadQuota(open_uploads=20, bytes_in_flight=100 * GiB, uploads_per_hour=200)
PLUS_QUOTA = UploadQuota(open_uploads=100, bytes_in_flight=1024 * GiB, uploads_per_hour=2_000)


class SettingsError(ValueError):
    """A setting is present but unusable; raised at start-up, never mid-job."""


def _int(
    env: Mapping[str, str], name: str, default: int, minimum: int = 0, maximum: int | None = None
) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from exc
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name} must be <= {maximum}, got {value}")
    return value


def _retention(env: Mapping[str, str], name: str, default: Retention) -> Retention:
    """removeOnComplete/removeOnFail accept what BullMQ accepts: true/false, a count, or JSON
    {"age": seconds, "count": n}."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{name} must be true, false, a count or JSON, got {raw!r}") from exc
    if isinstance(value, int) and value >= 0:
        return value
    if (
        isinstance(value, dict)
        and set(value) <= {"age", "count"}
        and all(type(n) is int and n >= 0 for n in value.values())
    ):
        return value
    raise SettingsError(f"{name} must be true, false, a count or {{age, count}}, got {raw!r}")


def _quota(env: Mapping[str, str], tier: str, default: UploadQuota) -> UploadQuota:
    """``OFFLOAD_QUOTA_<TIER>_OPEN_UPLOADS`` / ``_BYTES_IN_FLIGHT`` / ``_UPLOADS_PER_HOUR``."""
    prefix = f"OFFLOAD_QUOTA_{tier.upper()}_"
    return UploadQuota(
        open_uploads=_int(env, prefix + "OPEN_UPLOADS", default.open_uploads),
        bytes_in_flight=_int(env, prefix + "BYTES_IN_FLIGHT", default.bytes_in_flight),
        uploads_per_hour=_int(env, prefix + "UPLOADS_PER_HOUR", default.uploads_per_hour),
    )


def _sslmode(env: Mapping[str, str], default: str) -> str:
    raw = env.get("DATABASE_SSLMODE") or default
    if raw not in SSLMODES:
        raise SettingsError(f"DATABASE_SSLMODE must be one of {', '.join(SSLMODES)}, got {raw!r}")
    return raw


def _sslrootcert(env: Mapping[str, str], sslmode: str, default: str) -> str:
    """A CA file named but missing would fail every connection with verify-*: fail at start."""
    raw = env.get("DATABASE_SSLROOTCERT")
    if not raw:
        return default
    if sslmode in ("verify-ca", "verify-full") and not os.path.isfile(raw):
        raise SettingsError(f"DATABASE_SSLROOTCERT {raw!r} is not a file")
    return raw


def tls_query(sslmode: str, sslrootcert: str) -> str:
    """The URL query of a database URL we build: the CA file only where it is used (the
    verifying modes), so a local URL without TLS stays short."""
    query = f"sslmode={sslmode}"
    if sslmode in ("verify-ca", "verify-full"):
        query += f"&sslrootcert={quote(sslrootcert, safe='/')}"
    return query


def _database_url_from_parts(env: Mapping[str, str], tls: str) -> str | None:
    """ECS injects secrets one value at a time, and an RDS secret holds parts, not a URL: the
    database as DATABASE_HOST/PORT/NAME as plain values and DATABASE_USER/PASSWORD from the
    secret; TLS as for every URL we build (``tls`` from DATABASE_SSLMODE/SSLROOTCERT)."""
    host = env.get("DATABASE_HOST")
    if not host:
        return None
    user = quote(env.get("DATABASE_USER", ""), safe="")
    password = quote(env.get("DATABASE_PASSWORD", ""), safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    return (
        f"postgresql://{auth}{host}:{env.get('DATABASE_PORT', '5432')}/"
        f"{env.get('DATABASE_NAME', 'postgres')}?{tls}"
    )


def _schedules_setting(env: Mapping[str, str]) -> tuple[Schedule, ...]:
    raw = env.get("OFFLOAD_SCHEDULES")
    try:
        return _schedules.parse(raw if raw else _schedules.DEFAULT_SCHEDULES_JSON)
    except _schedules.ScheduleError as exc:
        raise SettingsError(f"OFFLOAD_SCHEDULES: {exc}") from exc


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _csv(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())


def _size_bands(env: Mapping[str, str], default: tuple[int, ...]) -> tuple[int, ...]:
    raw = env.get("OFFLOAD_PRIORITY_SIZE_BANDS")
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse_size_bands(raw)
    except ValueError as exc:
        raise SettingsError(f"OFFLOAD_PRIORITY_SIZE_BANDS: {exc}") from exc


def _step_limits(env: Mapping[str, str]) -> StepLimitOverrides:
    raw = env.get("OFFLOAD_STEP_LIMITS")
    if raw is None or raw.strip() == "":
        return ()
    try:
        return parse_step_limits(raw)
    except ValueError as exc:
        raise SettingsError(f"OFFLOAD_STEP_LIMITS: {exc}") from exc


def _hash_tagged(prefix: str) -> str:
    """Cluster mode (and ElastiCache Serverless) need every key of a queue in one slot, which
    only a `{hash tag}` in the prefix guarantees; wrap a bare prefix instead of failing."""
    if "{" in prefix and "}" in prefix.split("{", 1)[1]:
        return prefix
    return "{" + prefix + "}"


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_auth_token: str | None = field(default=None, repr=False)
    # The Lambdas: a secret holding the Redis AUTH token, read at cold start (lambdas/runtime.py;
    # Lambda cannot inject a secret into the environment, ECS injects REDIS_AUTH_TOKEN itself).
    redis_auth_secret_arn: str | None = None
    # The Redis (ACL / ElastiCache RBAC) user to log in as; with redis_iam_auth_cache (the
    # replication group id) its password is an IAM token of the process's own AWS role.
    redis_user: str | None = None
    redis_iam_auth_cache: str | None = None
    database_url: str = field(default="postgresql://postgres@127.0.0.1:5432/test", repr=False)
    database_schema: str = "offload"
    # An RDS secret (username, password, host, port, dbname) to connect with instead of
    # database_url, read again when it may have rotated (offload.db.credentials); and the RDS
    # Proxy endpoint that replaces the secret's host (the Lambdas).
    database_secret_arn: str | None = None
    database_proxy_host: str | None = None
    # True where the connection cannot carry libpq startup options (RDS Proxy refuses them,
    # so do PgBouncer and most poolers): the schema is then the database role's default
    # search_path, which the migrations set (offload.db.migrate), instead of "-c search_path".
    database_schema_from_role: bool = False
    # TLS of the URLs built from the secret or from parts (never of DATABASE_URL, used as
    # given): verify-full against the AWS roots shipped in the package, unless told otherwise.
    database_sslmode: str = "verify-full"
    database_sslrootcert: str = DATABASE_CA_FILE
    # The migrations: create the components' login roles <prefix>_api, _enqueue, _worker,
    # _reconciler with their grants (offload.db.roles). None: no roles are managed.
    database_role_prefix: str | None = None
    # Log in as this database user with an IAM token (rds-db:connect) generated before each new
    # connection, instead of a password: host, port, database and sslmode from database_url
    # (DATABASE_HOST/PORT/NAME/SSLMODE), the host replaced by database_proxy_host when set.
    database_iam_user: str | None = None
    queue_name: str = "uploads"
    queue_prefix: str = "{offload}"
    concurrency: int = 2
    lock_duration_ms: int = 30_000
    stalled_interval_ms: int = 30_000
    max_stalled_count: int = 1
    drain_delay_s: int = 5
    default_attempts: int = 5
    default_backoff_ms: int = 2_000
    remove_on_complete: Retention = field(
        default_factory=lambda: {"age": 7 * 86_400, "count": 10_000}
    )
    remove_on_fail: Retention = field(default_factory=lambda: {"age": 30 * 86_400})
    limiter_max: int = 0
    limiter_duration_ms: int = 1_000
    job_timeout_s: int = 3_600
    sandbox_max_jobs: int = 50
    # Address space of each sandbox child (RLIMIT_AS; 0: none). A child that imported boto3 and
    # Pillow maps ~400 MiB before its job: this leaves a job ~1 GiB, so a hostile file that
    # makes a decoder allocate without end gets a MemoryError instead of the task's OOM kill.
    sandbox_memory_mib: int = 1_536
    shutdown_grace_s: int = 100
    processor_modules: tuple[str, ...] = ("fargate_worker.processors.builtin",)
    s3_endpoint_url: str | None = None
    # Where an upload's final state is published (offload.upload_events): the EventBridge bus's
    # name or ARN (None: the account's default bus), and an endpoint override (moto locally).
    event_bus_name: str | None = None
    events_endpoint_url: str | None = None
    ecs_agent_uri: str | None = None
    task_protection_minutes: int = 60
    health_file: str = "/tmp/offload-worker.health"
    health_interval_s: int = 10
    # Every component's CloudWatch namespace: the worker's EMF, the Lambdas' Powertools metrics
    # and the queue metrics the autoscaling reads (see from_env for the variables).
    metrics_namespace: str = "Offload"
    # The queue-metrics Lambda publishes as EMF on stdout instead of PutMetricData: for an
    # environment whose Lambdas have no route to CloudWatch's API (no NAT gateway, no endpoint).
    metrics_emf: bool = False
    # Upload API and enqueue Lambdas
    upload_bucket: str = ""
    max_upload_bytes: int = 50 * 1024**3
    single_upload_max_bytes: int = 100 * 1024**2
    # The smallest part size a new multipart upload gets (whole MiB; larger files get larger
    # parts, so that 10,000 parts hold them). Fixed per upload when it is created (stored on
    # its row), so changing it never affects uploads in flight.
    part_size_bytes: int = 16 * MiB
    allowed_content_types: tuple[str, ...] = (
        "image/*",
        "video/*",
        "audio/*",
        "text/plain",
        "text/csv",
        "application/pdf",
        "application/zip",
        "application/json",
        "application/octet-stream",
    )
    url_expiry_s: int = 900
    # Days after which the bucket's lifecycle rule aborts an incomplete multipart upload (the
    # stack sets it from its storage config): until then an unfinished multipart upload counts
    # against its owner's quota, unless it is completed or aborted sooner.
    multipart_abort_after_days: int = 7
    # Per-user upload quotas by tier (offload.caller.Tier; offload.quotas enforces them).
    quota_standard: UploadQuota = STANDARD_QUOTA
    quota_plus: UploadQuota = PLUS_QUOTA
    # Days after which the lifecycle rule archives processing outputs (0: never): the API gives
    # no download links for outputs of jobs finished that long ago.
    processed_archive_after_days: int = 0
    part_url_batch: int = 100
    reconcile_after_s: int = 600
    reconcile_limit: int = 500
    # How long after its latest part URLs expired a pending multipart upload is aborted by the
    # reconciler (its parts deleted, its row aborted). Long enough for a part PUT started just
    # before the expiry to finish and for a client back from a short interruption (sleep,
    # network loss) to resume with fresh URLs; short enough that abandoned parts are not kept
    # for the lifecycle rule's days.
    expired_upload_grace_s: int = 3600
    enqueue_record_timeout_s: int = 10
    # API: the web origins allowed by CORS (none: no CORS headers).
    cors_origins: tuple[str, ...] = ()
    # Recurring system jobs (offload.schedules): registered by the workers at start and checked
    # again every schedule_check_s, so a schedule Redis lost comes back within that period.
    schedules: tuple[Schedule, ...] = field(
        default_factory=lambda: _schedules.parse(_schedules.DEFAULT_SCHEDULES_JSON)
    )
    schedule_check_s: int = 60
    # The retention job: final uploads older than this many days are deleted with their jobs
    # (rows and queue entries), retention_batch uploads per transaction.
    retention_days: int = 90
    retention_batch: int = 200
    # How the worker's parent process logs in for system jobs (the ``maintenance`` database role,
    # offload.db.roles): an IAM user (AWS) or a URL (local stack, tests). Unset: the worker's
    # own login (enough only where that login owns the schema).
    maintenance_database_url: str | None = field(default=None, repr=False)
    maintenance_database_iam_user: str | None = None
    # POST /jobs (offload.requested_jobs): per user, requested jobs in flight at once and
    # requested per hour (0: no limit).
    requested_jobs_in_flight: int = 3
    requested_jobs_per_hour: int = 20
    # Job priorities (offload.priorities): upper bounds of the upload size bands, smallest
    # first; smaller bands run first.
    priority_size_bands: tuple[int, ...] = (16 * MiB, 256 * MiB, 4 * GiB)
    # Per-step limits overriding the pipelines' declarations (offload.step_limits).
    step_limits: StepLimitOverrides = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()
        sslmode = _sslmode(env, defaults.database_sslmode)
        sslrootcert = _sslrootcert(env, sslmode, defaults.database_sslrootcert)
        return cls(
            redis_url=env.get("REDIS_URL", defaults.redis_url),
            redis_auth_token=env.get("REDIS_AUTH_TOKEN") or None,
            redis_auth_secret_arn=env.get("REDIS_AUTH_SECRET_ARN") or None,
            redis_user=env.get("REDIS_USER") or None,
            redis_iam_auth_cache=env.get("REDIS_IAM_AUTH_CACHE") or None,
            database_url=env.get("DATABASE_URL")
            or _database_url_from_parts(env, tls_query(sslmode, sslrootcert))
            or defaults.database_url,
            database_schema=env.get("OFFLOAD_DB_SCHEMA", defaults.database_schema),
            database_secret_arn=env.get("DATABASE_SECRET_ARN") or None,
            database_proxy_host=env.get("DATABASE_PROXY_HOST") or None,
            database_sslmode=sslmode,
            database_sslrootcert=sslrootcert,
            # RDS Proxy refuses startup options: behind it the schema comes from the role.
            database_schema_from_role=_flag(env, "OFFLOAD_DB_SCHEMA_FROM_ROLE")
            or bool(env.get("DATABASE_PROXY_HOST")),
            database_role_prefix=env.get("OFFLOAD_DB_ROLE_PREFIX") or None,
            database_iam_user=env.get("DATABASE_IAM_USER") or None,
            queue_name=env.get("OFFLOAD_QUEUE_NAME", defaults.queue_name),
            queue_prefix=_hash_tagged(env.get("OFFLOAD_QUEUE_PREFIX", "offload")),
            concurrency=_int(env, "OFFLOAD_CONCURRENCY", defaults.concurrency, minimum=1),
            lock_duration_ms=_int(env, "OFFLOAD_LOCK_DURATION_MS", defaults.lock_duration_ms, 1),
            stalled_interval_ms=_int(
                env, "OFFLOAD_STALLED_INTERVAL_MS", defaults.stalled_interval_ms, 1
            ),
            max_stalled_count=_int(env, "OFFLOAD_MAX_STALLED_COUNT", defaults.max_stalled_count),
            drain_delay_s=_int(env, "OFFLOAD_DRAIN_DELAY_S", defaults.drain_delay_s, 1),
            default_attempts=_int(env, "OFFLOAD_ATTEMPTS", defaults.default_attempts, 1),
            default_backoff_ms=_int(env, "OFFLOAD_BACKOFF_MS", defaults.default_backoff_ms),
            remove_on_complete=_retention(
                env, "OFFLOAD_REMOVE_ON_COMPLETE", defaults.remove_on_complete
            ),
            remove_on_fail=_retention(env, "OFFLOAD_REMOVE_ON_FAIL", defaults.remove_on_fail),
            limiter_max=_int(env, "OFFLOAD_LIMITER_MAX", defaults.limiter_max),
            limiter_duration_ms=_int(
                env, "OFFLOAD_LIMITER_DURATION_MS", defaults.limiter_duration_ms, 1
            ),
            job_timeout_s=_int(env, "OFFLOAD_JOB_TIMEOUT_S", defaults.job_timeout_s, 1),
            sandbox_max_jobs=_int(env, "OFFLOAD_SANDBOX_MAX_JOBS", defaults.sandbox_max_jobs, 1),
            sandbox_memory_mib=_int(
                env, "OFFLOAD_SANDBOX_MEMORY_MIB", defaults.sandbox_memory_mib, 0
            ),
            shutdown_grace_s=_int(env, "OFFLOAD_SHUTDOWN_GRACE_S", defaults.shutdown_grace_s),
            processor_modules=_csv(env, "OFFLOAD_PROCESSOR_MODULES") or defaults.processor_modules,
            s3_endpoint_url=env.get("S3_ENDPOINT_URL") or None,
            event_bus_name=env.get("OFFLOAD_EVENT_BUS") or None,
            events_endpoint_url=env.get("EVENTS_ENDPOINT_URL") or None,
            ecs_agent_uri=env.get("ECS_AGENT_URI") or None,
            task_protection_minutes=_int(
                env, "OFFLOAD_TASK_PROTECTION_MINUTES", defaults.task_protection_minutes, 1
            ),
            health_file=env.get("OFFLOAD_HEALTH_FILE", defaults.health_file),
            health_interval_s=_int(env, "OFFLOAD_HEALTH_INTERVAL_S", defaults.health_interval_s, 1),
            # Ours first; Powertools' own variable (which Powertools would read by itself) is
            # a fallback, so a function configured with only that one still agrees.
            metrics_namespace=env.get("OFFLOAD_METRICS_NAMESPACE")
            or env.get("POWERTOOLS_METRICS_NAMESPACE")
            or defaults.metrics_namespace,
            metrics_emf=_flag(env, "OFFLOAD_METRICS_EMF"),
            upload_bucket=env.get("UPLOAD_BUCKET", defaults.upload_bucket),
            max_upload_bytes=_int(env, "OFFLOAD_MAX_UPLOAD_BYTES", defaults.max_upload_bytes, 1),
            single_upload_max_bytes=_int(
                env, "OFFLOAD_SINGLE_UPLOAD_MAX_BYTES", defaults.single_upload_max_bytes, 1
            ),
            part_size_bytes=MiB
            * _int(
                env,
                "OFFLOAD_PART_SIZE_MIB",
                defaults.part_size_bytes // MiB,
                minimum=PART_SIZE_MIB_MIN,
                maximum=PART_SIZE_MIB_MAX,
            ),
            allowed_content_types=_csv(env, "OFFLOAD_ALLOWED_CONTENT_TYPES")
            or defaults.allowed_content_types,
            url_expiry_s=_int(env, "OFFLOAD_URL_EXPIRY_S", defaults.url_expiry_s, 1),
            multipart_abort_after_days=_int(
                env, "OFFLOAD_MULTIPART_ABORT_AFTER_DAYS", defaults.multipart_abort_after_days, 1
            ),
            quota_standard=_quota(env, "standard", defaults.quota_standard),
            quota_plus=_quota(env, "plus", defaults.quota_plus),
            processed_archive_after_days=_int(
                env, "OFFLOAD_PROCESSED_ARCHIVE_AFTER_DAYS", defaults.processed_archive_after_days
            ),
            part_url_batch=_int(env, "OFFLOAD_PART_URL_BATCH", defaults.part_url_batch, 1),
            reconcile_after_s=_int(env, "OFFLOAD_RECONCILE_AFTER_S", defaults.reconcile_after_s, 1),
            reconcile_limit=_int(env, "OFFLOAD_RECONCILE_LIMIT", defaults.reconcile_limit, 1),
            expired_upload_grace_s=_int(
                env, "OFFLOAD_EXPIRED_UPLOAD_GRACE_S", defaults.expired_upload_grace_s, 60
            ),
            enqueue_record_timeout_s=_int(
                env, "OFFLOAD_ENQUEUE_RECORD_TIMEOUT_S", defaults.enqueue_record_timeout_s, 1
            ),
            cors_origins=_csv(env, "OFFLOAD_CORS_ORIGIN"),
            schedules=_schedules_setting(env),
            schedule_check_s=_int(env, "OFFLOAD_SCHEDULE_CHECK_S", defaults.schedule_check_s, 1),
            retention_days=_int(env, "OFFLOAD_RETENTION_DAYS", defaults.retention_days, 1),
            retention_batch=_int(
                env, "OFFLOAD_RETENTION_BATCH", defaults.retention_batch, 1, 10_000
            ),
            maintenance_database_url=env.get("OFFLOAD_MAINTENANCE_DATABASE_URL") or None,
            maintenance_database_iam_user=env.get("DATABASE_MAINTENANCE_IAM_USER") or None,
            requested_jobs_in_flight=_int(
                env, "OFFLOAD_REQUESTED_JOBS_IN_FLIGHT", defaults.requested_jobs_in_flight
            ),
            requested_jobs_per_hour=_int(
                env, "OFFLOAD_REQUESTED_JOBS_PER_HOUR", defaults.requested_jobs_per_hour
            ),
            priority_size_bands=_size_bands(env, defaults.priority_size_bands),
            step_limits=_step_limits(env),
        )

    def upload_quota(self, tier: str) -> UploadQuota:
        """The quota of a tier (``offload.caller.Tier``); an unknown one gets the standard."""
        return self.quota_plus if tier == "plus" else self.quota_standard

    def default_job_options(self) -> dict[str, Any]:
        """Options every producer attaches: retries and retention do not depend on who enqueued."""
        return {
            "attempts": self.default_attempts,
            "backoff": {"type": "exponential", "delay": self.default_backoff_ms},
            "removeOnComplete": self.remove_on_complete,
            "removeOnFail": self.remove_on_fail,
        }
