"""``python -m offload_local``: run the local stack until Ctrl-C (see docs/local-stack.md)."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
from pathlib import Path

from offload.settings import Settings
from offload_local.stack import LocalStack, StackOptions


def parse_args(argv: list[str] | None = None) -> StackOptions:
    defaults = StackOptions()
    shipped = Settings()  # what the workers and Lambdas use when an option is not given
    parser = argparse.ArgumentParser(prog="python -m offload_local", description=__doc__)
    parser.add_argument("--workers", type=int, default=defaults.workers, help="worker processes")
    parser.add_argument(
        "--concurrency", type=int, default=defaults.worker_concurrency, help="jobs per worker"
    )
    parser.add_argument("--host", default=defaults.host, help="gateway address")
    parser.add_argument("--port", type=int, default=defaults.port, help="gateway port (0: any)")
    parser.add_argument("--workdir", type=Path, default=defaults.workdir, help="logs and state")
    parser.add_argument("--user", default=defaults.demo_user, help="demo user's e-mail")
    parser.add_argument("--password", help="demo user's password (default: a random one)")
    parser.add_argument(
        "--schema", default=defaults.schema, help="PostgreSQL schema (emptied at start)"
    )
    parser.add_argument(
        "--queue-prefix", default=defaults.queue_prefix, help="Redis key prefix (emptied at start)"
    )
    servers = parser.add_argument_group(
        "servers",
        "Redis and PostgreSQL to run on (default: REDIS_URL / DATABASE_URL when they "
        "answer, else throwaway servers)",
    )
    servers.add_argument("--redis-url", default=defaults.redis_url)
    servers.add_argument("--database-url", default=defaults.database_url)
    tuning = parser.add_argument_group(
        "timings", "default: the deployed settings (fault tests shorten them)"
    )
    tuning.add_argument(
        "--grace",
        type=float,
        default=defaults.worker_grace_s,
        help="seconds a worker on SIGTERM gives its running jobs",
    )
    tuning.add_argument(
        "--lock-duration-ms", type=int, help=f"worker job lock ({shipped.lock_duration_ms})"
    )
    tuning.add_argument(
        "--stalled-interval-ms", type=int, help=f"stalled-job check ({shipped.stalled_interval_ms})"
    )
    tuning.add_argument(
        "--max-stalled-count",
        type=int,
        help=f"stalls before a job fails ({shipped.max_stalled_count})",
    )
    tuning.add_argument(
        "--restart-delay",
        type=float,
        default=defaults.worker_restart_delay_s,
        help="seconds before a worker that exited is replaced, as ECS does (-1: never)",
    )
    tuning.add_argument(
        "--reconciler-every",
        type=float,
        default=defaults.reconciler_every_s,
        help="seconds between reconciler runs",
    )
    tuning.add_argument(
        "--reconcile-after",
        type=int,
        help=f"seconds before the reconciler repairs a row ({shipped.reconcile_after_s})",
    )
    tuning.add_argument(
        "--queue-metrics-every",
        type=float,
        default=defaults.queue_metrics_every_s,
        help="seconds between queue metrics runs",
    )
    tuning.add_argument(
        "--events-visibility-timeout",
        type=int,
        default=defaults.events_visibility_timeout_s,
        help="S3 event queue's visibility timeout, seconds",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra setting for the Lambdas and workers (repeatable), e.g. "
        "OFFLOAD_PROCESSOR_MODULES=...",
    )
    args = parser.parse_args(argv)
    if args.workers < 1 or args.concurrency < 1:
        parser.error("--workers and --concurrency must be at least 1")
    extra_env = dict(defaults.env)
    for item in args.env:
        name, equals, value = item.partition("=")
        if not equals or not name:
            parser.error(f"--env takes NAME=VALUE, got {item!r}")
        extra_env[name] = value
    return StackOptions(
        workers=args.workers,
        worker_concurrency=args.concurrency,
        host=args.host,
        port=args.port,
        redis_url=args.redis_url,
        database_url=args.database_url,
        workdir=args.workdir,
        demo_user=args.user,
        demo_password=args.password,
        schema=args.schema,
        queue_prefix=args.queue_prefix,
        queue_metrics_every_s=args.queue_metrics_every,
        reconciler_every_s=args.reconciler_every,
        reconcile_after_s=args.reconcile_after,
        events_visibility_timeout_s=args.events_visibility_timeout,
        worker_grace_s=args.grace,
        worker_lock_duration_ms=args.lock_duration_ms,
        worker_stalled_interval_ms=args.stalled_interval_ms,
        worker_max_stalled_count=args.max_stalled_count,
        worker_restart_delay_s=None if args.restart_delay < 0 else args.restart_delay,
        env=extra_env,
    )


def _port_free(host: str, port: int) -> bool:
    """Checked before anything starts, so a taken port fails fast and clearly."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _still_stopping(*_: object) -> None:
    print("still stopping: workers drain their jobs first...", flush=True)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    if options.port and not _port_free(options.host, options.port):
        print(
            f"offload_local: error: {options.host}:{options.port} is taken; "
            "choose another with --port N (0: any free port)",
            file=sys.stderr,
        )
        return 2
    options.workdir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=options.workdir / "stack.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    stopping = threading.Event()
    # SIGTERM as Ctrl-C: both stop the stack in order.
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    print("offload local stack: starting moto, Redis, PostgreSQL, Lambdas, workers...", flush=True)
    with LocalStack(options) as stack:
        # Up: from now on Ctrl-C only asks for the stop, as SIGTERM does. A KeyboardInterrupt
        # could land anywhere, even inside the shutdown (a second Ctrl-C right after the
        # first), and cut it short.
        signal.signal(signal.SIGINT, lambda *_: stopping.set())
        info = stack.info
        assert info is not None
        print(
            f"""
  Web page     {info.web_url}
  Sign in as   {info.username}
  Password     {info.password}

  API          {info.api_url}   (Authorization: a Cognito ID token)
  CLI          .venv/bin/python -m offload_cli --site {info.web_url} \\
                 --username {info.username} upload FILE...   (asks for the password)
  AWS (moto)   {info.moto_endpoint}   bucket {info.bucket}
  Redis        {info.redis_url}   queue prefix {info.queue_prefix}
  PostgreSQL   schema {info.schema}
  Events       EventBridge bus {info.upload_events_bus} -> SQS {info.upload_events_queue_url}
  Logs         {info.logdir}/   (lambda-*.log, worker-*.log, moto.log; ../stack.log)

Ctrl-C stops everything.""",
            flush=True,
        )
        stopping.wait()
        # A second Ctrl-C must not cut the shutdown short and leave servers behind.
        signal.signal(signal.SIGINT, _still_stopping)
        print("\nstopping: workers drain their jobs first...", flush=True)
    print("stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
