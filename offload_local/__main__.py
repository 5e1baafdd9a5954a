"""``python -m offload_local``: run the local stack until Ctrl-C (see README, "Local stack")."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
from pathlib import Path

from offload_local.stack import LocalStack, StackOptions


def parse_args(argv: list[str] | None = None) -> StackOptions:
    defaults = StackOptions()
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
    args = parser.parse_args(argv)
    if args.workers < 1 or args.concurrency < 1:
        parser.error("--workers and --concurrency must be at least 1")
    return StackOptions(
        workers=args.workers,
        worker_concurrency=args.concurrency,
        host=args.host,
        port=args.port,
        workdir=args.workdir,
        demo_user=args.user,
        demo_password=args.password,
        schema=args.schema,
        queue_prefix=args.queue_prefix,
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
  CLI          .venv/bin/python -m offload --site {info.web_url} \\
                 --username {info.username} upload FILE...   (asks for the password)
  AWS (moto)   {info.moto_endpoint}   bucket {info.bucket}
  Redis        {info.redis_url}   queue prefix {info.queue_prefix}
  PostgreSQL   schema {info.schema}
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
