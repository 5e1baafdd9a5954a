"""Entry point of the worker container: run until SIGTERM/SIGINT, then shut down gracefully.

ECS sends SIGTERM and, ``stopTimeout`` (≤ 120 s) later, SIGKILL. On SIGTERM the worker stops
taking jobs and gives running ones ``OFFLOAD_SHUTDOWN_GRACE_S`` (keep it below the stop
timeout) to finish; jobs still running after that are left to stalled recovery elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from fargate_worker.hardening import make_undumpable
from fargate_worker.worker import OffloadWorker
from offload.logs import configure_logging
from offload.settings import Settings
from offload.usage import parse_env_only_args

log = logging.getLogger("fargate_worker")


async def run(settings: Settings) -> int:
    worker = OffloadWorker(settings)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.request_stop)
    await worker.start()
    await worker.wait_stopped()
    clean = await worker.shutdown()
    log.info("worker stopped", extra={"state": "clean" if clean else "jobs abandoned"})
    return 0


def main(argv: list[str] | None = None) -> int:
    parse_env_only_args(
        "python -m fargate_worker",
        "The Fargate worker: takes jobs from the Redis queue and runs them in sandboxed child "
        "processes until SIGTERM or SIGINT, then stops taking jobs and gives the running ones "
        "OFFLOAD_SHUTDOWN_GRACE_S to finish.",
        argv,
    )
    # First, before a secret is read: the sandbox children run hostile input as this uid, and
    # must not read this process's environment or memory through /proc (hardening.py).
    make_undumpable()
    configure_logging()
    return asyncio.run(run(Settings.from_env()))


if __name__ == "__main__":
    sys.exit(main())
