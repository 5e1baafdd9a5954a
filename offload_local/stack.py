"""The local stack: every part of the pipeline on this machine, wired as the CDK app wires it
in AWS (stacks/), started and stopped as one."""

from __future__ import annotations

import json
import logging
import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg import sql

from offload_local import aws_resources, servers
from offload_local.cognito_auth import CognitoAuthorizer
from offload_local.containers import FunctionSpec, LambdaFunction
from offload_local.gateway import Gateway
from offload_local.scheduler import Schedule
from offload_local.sqs_poller import SqsPoller
from offload_local.workers import WorkerFleet

REPO_ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("offload_local")


@dataclass
class StackOptions:
    workers: int = 2
    worker_concurrency: int = 2
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port
    # The configured servers (setup's defaults) when they answer, else throwaway ones.
    redis_url: str = field(
        default_factory=lambda: os.environ.get("REDIS_URL", servers.DEFAULT_REDIS_URL)
    )
    database_url: str = field(
        default_factory=lambda: os.environ.get("DATABASE_URL", servers.DEFAULT_DATABASE_URL)
    )
    schema: str = "offload_local"
    queue_prefix: str = "{offload-local}"
    bucket: str = "offload-local-uploads"
    workdir: Path = REPO_ROOT / ".local-stack"
    web_root: Path = REPO_ROOT / "web"
    demo_user: str = "demo@example.com"
    demo_password: str | None = None  # None: a random one, printed at start
    queue_metrics_every_s: float = 60.0  # stacks/api.py QUEUE_METRICS_SCHEDULE
    reconciler_every_s: float = 300.0  # stacks/api.py RECONCILER_SCHEDULE
    events_max_receive_count: int = 3
    events_visibility_timeout_s: int = 60
    worker_grace_s: float = 30.0
    # Worker settings; None: the shipped default (offload.settings.Settings, what stacks/
    # deploys). Fault tests shorten them so that stalled jobs come back within seconds.
    worker_lock_duration_ms: int | None = None
    worker_stalled_interval_ms: int | None = None
    worker_max_stalled_count: int | None = None
    # Age before the reconciler repairs a row (None: the shipped 600 s).
    reconcile_after_s: int | None = None
    # A worker that exits is replaced this long after, as the ECS service replaces a stopped
    # task (None: not replaced).
    worker_restart_delay_s: float | None = 1.0
    # Extra settings for the Lambdas and workers. Multipart from 8 MiB up, so that files of a
    # demo's size take the multipart path (AWS deployments default to 100 MiB), in parts of
    # 5 MiB (S3's smallest; deployments default to 16 MiB), so that a demo file of ~20 MB is
    # several parts: parallel parts, progress and resume show on files that small.
    env: dict[str, str] = field(
        default_factory=lambda: {
            "OFFLOAD_SINGLE_UPLOAD_MAX_BYTES": str(8 * 1024 * 1024),
            "OFFLOAD_PART_SIZE_MIB": "5",
        }
    )


UPLOAD_EVENTS_BUS = "offload-upload-events"


@dataclass(frozen=True)
class StackInfo:
    """Where everything is; also written to ``<workdir>/stack.json`` for other tools."""

    web_url: str
    api_url: str
    moto_endpoint: str
    region: str
    user_pool_id: str
    client_id: str
    username: str
    password: str
    user_sub: str
    bucket: str
    events_queue_url: str
    events_dlq_url: str
    redis_url: str
    database_url: str
    schema: str
    queue_prefix: str
    logdir: str
    # The EventBridge bus the workers publish upload outcomes to, and the queue its rule
    # copies them to (aws_resources.create_upload_events).
    upload_events_bus: str = ""
    upload_events_queue_url: str = ""

    def web_config(self) -> dict[str, Any]:
        return {
            "apiBase": "/api",
            "region": self.region,
            "clientId": self.client_id,
            "cognitoEndpoint": self.moto_endpoint + "/",
        }


class LocalStack:
    def __init__(self, options: StackOptions | None = None):
        self.options = options or StackOptions()
        self._exit = ExitStack()
        self.info: StackInfo | None = None
        self.functions: dict[str, LambdaFunction] = {}
        self.poller: SqsPoller | None = None
        self.schedules: list[Schedule] = []
        self.workers: WorkerFleet | None = None

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> StackInfo:
        opts = self.options
        workdir = opts.workdir.resolve()
        logdir = workdir / "logs"
        logdir.mkdir(parents=True, exist_ok=True)
        moto = self._exit.enter_context(servers.moto_server(logdir / "moto.log"))
        redis_url = self._exit.enter_context(servers.redis_server(opts.redis_url, workdir))
        database_url = self._exit.enter_context(servers.postgres_server(opts.database_url, workdir))
        self._reset_state(redis_url, database_url)

        from offload.db.migrate import migrate

        migrate(database_url, opts.schema)

        pool = aws_resources.create_user_pool(moto, "offload-local")
        user = aws_resources.create_user(moto, pool, opts.demo_user, opts.demo_password)
        queues = aws_resources.create_event_queues(
            moto, "offload-events", opts.events_max_receive_count, opts.events_visibility_timeout_s
        )
        upload_events_queue = aws_resources.create_upload_events(moto, UPLOAD_EVENTS_BUS)
        runtime_env = {
            **_aws_env(moto),
            "OFFLOAD_EVENT_BUS": UPLOAD_EVENTS_BUS,
            "EVENTS_ENDPOINT_URL": moto,
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "OFFLOAD_DB_SCHEMA": opts.schema,
            "OFFLOAD_QUEUE_PREFIX": opts.queue_prefix,
            "UPLOAD_BUCKET": opts.bucket,
            "S3_ENDPOINT_URL": moto,
            **_set_only(OFFLOAD_RECONCILE_AFTER_S=opts.reconcile_after_s),
            **opts.env,
        }
        self._start_functions(runtime_env, logdir)
        gateway = Gateway(
            invoke_api=self.functions["api"].invoke,
            authorizer=CognitoAuthorizer(moto, aws_resources.REGION, pool.id, {pool.client_id}),
            web_root=opts.web_root,
            web_config={},
            host=opts.host,
            port=opts.port,
        )
        aws_resources.create_bucket(moto, opts.bucket, [gateway.url])
        aws_resources.notify_object_created(
            aws_resources.client("s3", moto), opts.bucket, queues.arn
        )
        self.info = StackInfo(
            web_url=gateway.url + "/",
            api_url=gateway.url + "/api",
            moto_endpoint=moto,
            region=aws_resources.REGION,
            user_pool_id=pool.id,
            client_id=pool.client_id,
            username=user.username,
            password=user.password,
            user_sub=user.sub,
            bucket=opts.bucket,
            events_queue_url=queues.url,
            events_dlq_url=queues.dlq_url,
            redis_url=redis_url,
            database_url=database_url,
            schema=opts.schema,
            queue_prefix=opts.queue_prefix,
            logdir=str(logdir),
            upload_events_bus=UPLOAD_EVENTS_BUS,
            upload_events_queue_url=upload_events_queue,
        )
        gateway.web_config.update(self.info.web_config())
        gateway.start()
        self._exit.callback(gateway.stop)

        sqs = aws_resources.client("sqs", moto)
        self.poller = SqsPoller(sqs, queues.url, queues.arn, self.functions["enqueue"].invoke)
        self.poller.start()
        self._exit.callback(self.poller.stop)
        for name, every in (
            ("queue-metrics", opts.queue_metrics_every_s),
            ("reconciler", opts.reconciler_every_s),
        ):
            schedule = Schedule(name, every, self.functions[name].invoke)
            schedule.start()
            self._exit.callback(schedule.stop)
            self.schedules.append(schedule)

        self.workers = WorkerFleet(
            opts.workers,
            {
                **os.environ,
                "OFFLOAD_CONCURRENCY": str(opts.worker_concurrency),
                "OFFLOAD_SHUTDOWN_GRACE_S": str(int(opts.worker_grace_s)),
                **_set_only(
                    OFFLOAD_LOCK_DURATION_MS=opts.worker_lock_duration_ms,
                    OFFLOAD_STALLED_INTERVAL_MS=opts.worker_stalled_interval_ms,
                    OFFLOAD_MAX_STALLED_COUNT=opts.worker_max_stalled_count,
                ),
                **runtime_env,  # ends with opts.env, which may override the settings above
            },
            logdir,
            workdir,
            restart_delay_s=opts.worker_restart_delay_s,
        )
        self.workers.start()
        # Registered last, so it runs first: workers drain before the servers go away.
        self._exit.callback(self.workers.stop, opts.worker_grace_s + 5)
        # Owner-only: it holds the demo user's password.
        descriptor = os.open(workdir / "stack.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(descriptor, 0o600)  # an older file keeps its mode through O_CREAT
        with os.fdopen(descriptor, "w") as out:
            out.write(json.dumps(self.info.__dict__, indent=2) + "\n")
        return self.info

    def _start_functions(self, runtime_env: dict[str, str], logdir: Path) -> None:
        """The four Lambdas of stacks/api.py, each in containers of its own."""
        for name, handler, timeout_s, concurrency in (
            ("api", "lambdas.api.handler", 29.0, 4),
            ("enqueue", "lambdas.enqueue.handler", 60.0, 1),
            ("queue-metrics", "lambdas.queue_metrics.handler", 60.0, 1),
            ("reconciler", "lambdas.reconciler.handler", 120.0, 1),
        ):
            function = LambdaFunction(
                FunctionSpec(
                    name=name,
                    handler=handler,
                    env={
                        **runtime_env,
                        "AWS_LAMBDA_FUNCTION_NAME": f"offload-{name}",
                        "POWERTOOLS_SERVICE_NAME": f"offload-{name}",
                        "POWERTOOLS_TRACE_DISABLED": "true",
                    },
                    timeout_s=timeout_s,
                    max_concurrency=concurrency,
                    log_path=logdir / f"lambda-{name}.log",
                )
            )
            self._exit.callback(function.stop)
            function.warm_up()
            self.functions[name] = function

    def _reset_state(self, redis_url: str, database_url: str) -> None:
        """moto starts empty every time, so this run's schema and queue keys start empty too."""
        delete_keys(redis_url, self.options.queue_prefix)
        drop_schema(database_url, self.options.schema)

    def stop(self) -> None:
        self._exit.close()


def _set_only(**settings: float | None) -> dict[str, str]:
    """The environment variables of the settings that are set (None: the shipped default)."""
    return {name: str(value) for name, value in settings.items() if value is not None}


def _aws_env(moto: str) -> dict[str, str]:
    """Dummy credentials and every AWS SDK call to moto (``AWS_ENDPOINT_URL``)."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": aws_resources.REGION,
        "AWS_REGION": aws_resources.REGION,
        "AWS_ENDPOINT_URL": moto,
    }


def delete_keys(redis_url: str, prefix: str) -> None:
    """Every key of the queues under ``prefix``."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


def drop_schema(database_url: str, schema: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
