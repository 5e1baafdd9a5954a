"""The sandbox child: runs processors one job at a time, talking to the worker over a pipe.

Messages parent -> child (pickled: the worker is trusted): ``("run", job_id, name, attempt,
data)``, and ``("presigned", status, url_or_reason)`` in answer to a ``presign``.
Messages child -> parent: ``("progress", value)`` and ``("presign", operation, params)`` (an S3
request the worker signs if the job may make it: the child holds no AWS credentials), then
``("done", result)`` or ``("error", permanent, message, traceback_text)``. These are JSON, never
pickles: the child runs hostile input, and unpickling its bytes would run its code in the
worker.

A worker killed with SIGKILL must leave no orphan that keeps writing outputs after another
worker took the job over: the child watches the worker's pid (and, as a second line, asks the
kernel to SIGKILL it when its parent, the fork server, dies). It exits by itself after
``max_jobs`` jobs (recycling against leaks).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import resource
import select
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from fargate_worker.hardening import forbid_privilege_gain, make_undumpable
from offload.settings import Settings
from offload.user_errors import user_message

PR_SET_PDEATHSIG = 1


def die_with_parent(worker_pid: int) -> None:
    """Ask the kernel to SIGKILL this child when its parent dies. The parent is the fork
    server, which exits as soon as the worker does (its end of the worker's "alive" pipe
    closes), so a dead worker takes its fork server and then every child down with it."""
    parent_at_start = os.getppid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # Either may have died before prctl took effect: then nobody would kill us later.
    if os.getppid() != parent_at_start or not _alive(worker_pid):
        os._exit(1)


def limit_resources(memory_mib: int) -> None:
    """What a processor fed a hostile file can take: ``memory_mib`` of address space (a decoder
    that allocates without end gets a MemoryError, the attempt fails and the task lives), no
    core dump (it would hold the user's data), no privilege gained through exec (a setuid
    binary run by a processor gets none), and not dumpable: the children of one worker share a
    uid, and a child parsing one user's file must not read another child's memory (the other
    user's file, its presigned URLs) through ``/proc/<pid>/mem``."""
    if memory_mib > 0:
        limit = memory_mib * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    forbid_privilege_gain()
    make_undumpable()


def watch_worker(worker_pid: int) -> None:
    """Exit the moment the worker dies, even mid-job. PDEATHSIG alone fires only when the fork
    server has finished exiting (interpreter teardown: far too late for a child that is still
    writing outputs another worker is about to produce). A pidfd becomes readable when the
    process exits: a thread blocked on it costs nothing until then."""

    def wait_then_exit() -> None:
        try:
            pidfd = os.pidfd_open(worker_pid)
        except (AttributeError, OSError):  # no pidfd (old kernel): poll instead
            while _alive(worker_pid):
                time.sleep(0.1)
        else:
            select.select([pidfd], [], [])
        os._exit(1)

    threading.Thread(target=wait_then_exit, name="watch-worker", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Pipe:
    """The child's end of the pipe, safe to use from the processor's threads: one lock keeps
    each message whole and each presign request next to its answer."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, message: tuple) -> None:
        data = json.dumps(message, allow_nan=False).encode()
        with self._lock:
            self.conn.send_bytes(data)

    def presign(self, operation: str, params: dict[str, Any]) -> str:
        from fargate_worker.errors import S3AccessRefused

        data = json.dumps(("presign", operation, params)).encode()
        with self._lock:
            self.conn.send_bytes(data)
            kind, status, value = self.conn.recv()
        if kind != "presigned":
            raise RuntimeError(f"the worker answered {kind!r} to a presign request")
        if status == "refused":
            raise S3AccessRefused(f"S3 request refused: {value}")
        if status != "ok":
            raise RuntimeError(f"the worker could not presign the S3 request: {value}")
        return str(value)


def _run_one(message: tuple, registry: dict, settings: Settings, pipe: Pipe) -> tuple:
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
        send_progress=lambda value: pipe.send(("progress", value)),
        presign=pipe.presign,
    )
    processor = registry.get(name)
    if processor is None:
        return ("error", True, f"unknown job name {name!r}", "")
    try:
        result = processor.fn(context)
    except (PermanentJobError, InvalidJobData) as exc:
        return _failure(True, exc)
    except BaseException as exc:
        return _failure(False, exc)
    problem = unstorable(result)
    if problem:
        return ("error", True, f"result of {name!r} is not JSON-serialisable: {problem}", "")
    return ("done", result)


def _failure(permanent: bool, exc: BaseException) -> tuple:
    """The error for the parent, its text made UTF-8-safe: a message may quote an undecodable
    file name (Python holds its bytes as lone surrogates), which neither PostgreSQL text nor
    Redis (redis-py encodes strictly) can take, so the outcome could not be stored and the
    row stayed ``active``. A surrogate becomes its ``\\udcXX`` escape, which keeps the byte.
    The message is what the job's user reads (offload.user_errors: no bucket, ARN, URL, SQL);
    the traceback, with the exception's whole text, goes to the stack column."""
    message = user_message(exc)
    return ("error", permanent, _utf8(message), _utf8(traceback.format_exc()))


def _utf8(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# A \u0000 escape in JSON text: after an even number of backslashes (escaped backslashes),
# so that a string holding a backslash then "u0000" (JSON "\\u0000") does not match.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def unstorable(result: object) -> str | None:
    """Why ``result`` cannot be stored as JSON in Redis and PostgreSQL's jsonb, or None.
    Checked here, once, because the same result would fail every attempt: Python's json writes
    NaN and infinities, which are not JSON, and jsonb refuses NUL characters and lone
    surrogates; the status write would then fail after the work was done, and be retried."""
    try:
        text = json.dumps(result, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")  # a lone surrogate (an undecodable file name) does not encode
    except (TypeError, ValueError, RecursionError) as exc:
        return str(exc)
    if _NUL_ESCAPE.search(text):
        return "a string holds a NUL character (\\u0000), which PostgreSQL cannot store"
    return None


def child_main(
    conn: Connection,
    worker_pid: int,
    settings: Settings,
    max_jobs: int,
    environ: dict[str, str],
) -> None:
    die_with_parent(worker_pid)
    watch_worker(worker_pid)
    limit_resources(settings.sandbox_memory_mib)
    # The fork server's environment is the worker's at the time the server started; a child
    # gets the worker's environment as it is now, as a freshly spawned process would.
    os.environ.clear()
    os.environ.update(environ)
    # SIGTERM/SIGINT go to the whole process group on `docker stop` or Ctrl-C; the parent
    # decides when a child ends, so the child ignores them and finishes its job.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    from fargate_worker import processors
    from offload.logs import configure_logging

    configure_logging()
    log = logging.getLogger("fargate_worker.sandbox")
    registry = processors.load(settings.processor_modules)
    pipe = Pipe(conn)
    try:
        pipe.send(("ready", os.getpid()))
        for _ in range(max_jobs):
            message = conn.recv()
            if message[0] != "run":
                log.error("sandbox got an unknown message %r", message[0])
                return
            pipe.send(_run_one(message, registry, settings, pipe))
    except (EOFError, OSError):
        return  # the worker closed the pipe (shutdown, or it died): nothing left to report to
    finally:
        conn.close()
