"""The sandbox child: runs processors one job at a time, talking to the worker over a pipe.

Messages parent -> child: ``("run", job_id, name, attempt, data)``.
Messages child -> parent: ``("progress", value)``, then ``("done", result)`` or
``("error", permanent, message, traceback_text)``.

The child asks the kernel to SIGKILL it when its parent dies (PR_SET_PDEATHSIG), so a worker
killed with SIGKILL leaves no orphan that keeps writing outputs after another worker took the
job over. It exits by itself after ``max_jobs`` jobs (recycling against leaks).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
import traceback
from multiprocessing.connection import Connection

from offload.settings import Settings

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The parent may have died before prctl took effect: then we were re-parented.
    if os.getppid() != parent_pid:
        os._exit(1)


def _run_one(message: tuple, registry: dict, settings: Settings, conn: Connection) -> tuple:
    from fargate_worker.context import JobContext
    from fargate_worker.errors import PermanentJobError
    from offload.jobs import InvalidJobData

    _, job_id, name, attempt, data = message
    context = JobContext(
        job_id=job_id,
        name=name,
        attempt=attempt,
        data=data,
        settings=settings,
        send_progress=lambda value: conn.send(("progress", value)),
    )
    processor = registry.get(name)
    if processor is None:
        return ("error", True, f"unknown job name {name!r}", "")
    try:
        result = processor.fn(context)
    except (PermanentJobError, InvalidJobData) as exc:
        return ("error", True, f"{type(exc).__name__}: {exc}", traceback.format_exc())
    except BaseException as exc:
        return ("error", False, f"{type(exc).__name__}: {exc}", traceback.format_exc())
    try:
        json.dumps(result)  # the result is stored as JSON in Redis and PostgreSQL
    except (TypeError, ValueError) as exc:
        return ("error", True, f"result of {name!r} is not JSON-serialisable: {exc}", "")
    return ("done", result)


def child_main(conn: Connection, parent_pid: int, settings: Settings, max_jobs: int) -> None:
    die_with_parent(parent_pid)
    # SIGTERM/SIGINT go to the whole process group on `docker stop` or Ctrl-C; the parent
    # decides when a child ends, so the child ignores them and finishes its job.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    from fargate_worker import processors
    from offload.logs import configure_logging

    configure_logging()
    log = logging.getLogger("fargate_worker.sandbox")
    registry = processors.load(settings.processor_modules)
    try:
        conn.send(("ready", os.getpid()))
        for _ in range(max_jobs):
            message = conn.recv()
            if message[0] != "run":
                log.error("sandbox got an unknown message %r", message[0])
                return
            conn.send(_run_one(message, registry, settings, conn))
    except (EOFError, OSError):
        return  # the worker closed the pipe (shutdown, or it died): nothing left to report to
    finally:
        conn.close()
