"""Sandboxed processors: job code runs in child processes, never on the worker's event loop.

bullmq-py has no sandboxing (docs/design.md, gap 4): a CPU-bound processor on the event loop stops
lock renewal and the job is wrongly failed as stalled. Here every job runs in a child process
from a fixed-size pool (one child per concurrency slot), so the loop keeps renewing locks,
and a child that crashes (SIGKILL, segfault, MemoryError) is one failed attempt instead of a
dead worker. Children come from a fork server (no inherited Redis sockets or event loop),
recycled after ``max_jobs`` jobs, and killed on timeout or cancellation.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import struct
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import replace
from typing import Any

from fargate_worker.errors import (
    JobTimedOut,
    PermanentJobError,
    ProcessorFailed,
    RemoteTraceback,
    SandboxCrashed,
)
from fargate_worker.s3grants import GrantRefused, JobGrants
from fargate_worker.sandbox_child import child_main
from offload.settings import Settings

log = logging.getLogger(__name__)
# Children fork from a fork server that has already imported the child's code: a child is
# ready in ~10 ms instead of the ~110 ms (and ~130 ms of CPU) a fresh interpreter costs, which
# matters when children are recycled every few jobs. The fork server itself starts clean (no
# inherited event loop, Redis sockets or threads), like ``spawn``.
_MP = multiprocessing.get_context("forkserver")
_PRELOAD = ("fargate_worker.sandbox_child", "fargate_worker.context")
# Imported last, after the processors: boto3 and botocore's caches for every child.
_PRELOAD_LAST = "fargate_worker.sandbox_preload"
# What a child (and the hostile file it parses) must not find: the credentials to the queue and
# the database, and where to fetch them; and every way to AWS credentials (on Fargate, the
# relative URI is the secret path of the task role's credentials on 169.254.170.2, and the task
# role reads the database secret). A child reaches S3 only through URLs the worker presigns for
# its job's objects (s3grants.py); the worker holds the rest.
SECRET_ENVIRONMENT = (
    "REDIS_URL",  # may carry a password
    "REDIS_AUTH_TOKEN",
    "REDIS_AUTH_SECRET_ARN",
    "REDIS_USER",  # with the task role's credentials, enough to sign a Redis IAM token
    "REDIS_IAM_AUTH_CACHE",
    "DATABASE_URL",  # may carry a password
    "DATABASE_SECRET_ARN",
    "DATABASE_IAM_USER",  # the worker's database user: with AWS credentials, a login
    "DATABASE_MAINTENANCE_IAM_USER",  # the system jobs' database user (offload.db.roles)
    "OFFLOAD_MAINTENANCE_DATABASE_URL",  # may carry a password
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",  # the legacy name of the session token
    "AWS_CREDENTIAL_EXPIRATION",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "ECS_AGENT_URI",  # the task's scale-in protection: the worker's business only
    "ECS_CONTAINER_METADATA_URI",  # the task's metadata: nothing a processor needs
    "ECS_CONTAINER_METADATA_URI_V4",
)
START_TIMEOUT_S = 60.0
_HEADER = struct.Struct("!i")
_LONG_HEADER = struct.Struct("!Q")
_READ_SIZE = 1 << 16
RESPAWN_BACKOFF_S = (0.5, 1, 2, 5, 10)


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in environ.items() if name not in SECRET_ENVIRONMENT}


def child_settings(settings: Settings) -> Settings:
    """The settings a child gets: the worker's, without a way into Redis or PostgreSQL."""
    return replace(
        settings,
        redis_url="",
        redis_auth_token=None,
        redis_auth_secret_arn=None,
        redis_user=None,
        redis_iam_auth_cache=None,
        database_url="",
        database_secret_arn=None,
        database_proxy_host=None,
        database_iam_user=None,
        maintenance_database_url=None,
        maintenance_database_iam_user=None,
    )


@contextlib.contextmanager
def _secrets_out_of_the_environment() -> Iterator[None]:
    """While the fork server starts: it is exec'd with this process's environment, which the
    kernel keeps for it and for every child it forks (``/proc/<pid>/environ``), whatever they
    do to ``os.environ`` afterwards."""
    saved = {name: os.environ.pop(name) for name in SECRET_ENVIRONMENT if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "child stopped answering"
    if exitcode < 0:
        try:
            return f"child killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"child killed by signal {-exitcode}"
    return f"child exited with code {exitcode}"


class SandboxProcess:
    """One child process and its end of the pipe."""

    def __init__(self, settings: Settings, max_jobs: int):
        self._conn, child_conn = _MP.Pipe(duplex=True)
        self.max_jobs = max_jobs
        self.jobs_run = 0
        self.process = _MP.Process(
            target=child_main,
            args=(
                child_conn,
                os.getpid(),
                child_settings(settings),
                max_jobs,
                child_environment(os.environ),
            ),
            name="offload-sandbox",
            daemon=True,
        )
        self._child_conn = child_conn
        self._reading = False
        self._buffer = bytearray()
        self._messages: collections.deque[tuple] = collections.deque()
        self._waiter: asyncio.Future | None = None
        self._eof = False
        self._unreadable = ""

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def usable(self) -> bool:
        return self.process.is_alive() and self.jobs_run < self.max_jobs

    async def start(self) -> None:
        # Process.start() starts the fork server again if it died: never with the secrets.
        with _secrets_out_of_the_environment():
            self.process.start()
        self._child_conn.close()
        # The child's messages are read by a reader callback that stays registered for the
        # child's life (no poll + add/remove reader per message: these are syscalls).
        asyncio.get_running_loop().add_reader(self._conn.fileno(), self._on_readable)
        self._reading = True
        message = await asyncio.wait_for(self._recv(), START_TIMEOUT_S)
        if message[0] != "ready":
            raise SandboxCrashed(f"sandbox child sent {message[0]!r} instead of 'ready'")

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            # no running loop, or the pipe is already closed: nothing left to unregister
            with contextlib.suppress(RuntimeError, OSError, ValueError):
                asyncio.get_running_loop().remove_reader(self._conn.fileno())

    def _on_readable(self) -> None:
        """Read what the pipe has and split it into messages (multiprocessing.Connection's
        framing, which the child's ``send_bytes`` writes: a 4-byte big-endian length, or -1 and
        an 8-byte one for messages over 2 GiB, then the message's JSON: never a pickle, whose
        loading would run code the child chose, sandbox_child.py)."""
        try:
            data = os.read(self._conn.fileno(), _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._eof = True
            self._stop_reading()
        else:
            self._buffer += data
            try:
                self._split_messages()
            except Exception as exc:  # a message that is not JSON: the child is unusable
                self._unreadable = f"unreadable message from the sandbox child: {exc!r}"
                self._eof = True
                self._stop_reading()
        waiter = self._waiter
        if waiter is not None and not waiter.done() and (self._messages or self._eof):
            waiter.set_result(None)

    def _split_messages(self) -> None:
        buffer = self._buffer
        while len(buffer) >= 4:
            (size,) = _HEADER.unpack_from(buffer)
            start = 4
            if size == -1:
                if len(buffer) < 12:
                    return
                (size,) = _LONG_HEADER.unpack_from(buffer, 4)
                start = 12
            if len(buffer) < start + size:
                return
            self._messages.append(tuple(json.loads(buffer[start : start + size])))
            del buffer[: start + size]

    async def _recv(self) -> tuple:
        while not self._messages:
            if self._unreadable:
                raise SandboxCrashed(self._unreadable)
            if self._eof:
                raise SandboxCrashed(await self._exit_description())
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._messages.popleft()

    async def _exit_description(self) -> str:
        for _ in range(200):  # the pipe closed, so the exit is a matter of milliseconds
            if self.process.exitcode is not None:
                break
            await asyncio.sleep(0.01)
        return describe_exit(self.process.exitcode)

    async def run(
        self,
        job_id: str,
        name: str,
        attempt: int,
        data: Any,
        on_progress: Callable[[Any], None],
        grants: JobGrants | None = None,
    ) -> Any:
        self.jobs_run += 1
        self._conn.send(("run", job_id, name, attempt, data))
        while True:
            message = await self._recv()
            kind = message[0]
            if kind == "progress":
                on_progress(message[1])
            elif kind == "presign" and len(message) == 3:
                self._conn.send(("presigned", *await _presign(grants, message[1], message[2])))
            elif kind == "done":
                return message[1]
            elif kind == "error":
                _, permanent, text, stack = message
                error_type = PermanentJobError if permanent else ProcessorFailed
                raise error_type(text) from (RemoteTraceback(stack) if stack else None)
            else:
                raise SandboxCrashed(f"sandbox child sent unknown message {kind!r}")

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self._stop_reading()
        self._conn.close()

    async def dispose(self) -> None:
        """Kill (if still running) and reap, without blocking the loop."""
        self.kill()
        if self.process.pid is not None:
            await asyncio.to_thread(self.process.join, 5)


async def _presign(grants: JobGrants | None, operation: Any, params: Any) -> tuple[str, str]:
    """The answer to a child's presign request: ``("ok", url)``, ``("refused", why)`` for a
    request outside its job's objects (a permanent error in the child), or ``("failed", why)``
    when signing itself failed (credentials unavailable: retried like any error)."""
    if grants is None:
        return "refused", "this job has no S3 object"
    if not isinstance(operation, str) or not isinstance(params, dict):
        return "refused", "malformed S3 request"
    try:
        # In a thread: signing may first refresh the worker's credentials (an HTTP call).
        return "ok", await asyncio.to_thread(grants.presign, operation, params)
    except GrantRefused as exc:
        log.warning("refused a sandbox child's S3 request: %s", exc)
        return "refused", str(exc)
    except Exception as exc:
        log.error("could not presign a sandbox child's S3 request: %r", exc)
        return "failed", f"{type(exc).__name__}: {exc}"


class SandboxPool:
    """``size`` warm children; a job borrows one, a broken or worn-out one is replaced."""

    def __init__(self, settings: Settings, size: int):
        self._settings = settings
        self._size = size
        self._ready: asyncio.Queue[SandboxProcess] = asyncio.Queue()
        self._busy: set[SandboxProcess] = set()
        self._background: set[asyncio.Task] = set()
        self._closed = False

    @property
    def child_pids(self) -> list[int]:
        boxes = list(self._busy) + list(self._ready._queue)
        return [box.pid for box in boxes if box.pid is not None]

    async def start(self) -> None:
        # Takes effect if the fork server is not running yet (first pool of the process).
        _MP.set_forkserver_preload([*_PRELOAD, *self._settings.processor_modules, _PRELOAD_LAST])
        with _secrets_out_of_the_environment():
            multiprocessing.forkserver.ensure_running()  # no-op once it runs
        boxes = [
            SandboxProcess(self._settings, self._settings.sandbox_max_jobs)
            for _ in range(self._size)
        ]
        await asyncio.gather(*(box.start() for box in boxes))
        for box in boxes:
            self._ready.put_nowait(box)

    def _in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _replace(self) -> None:
        if not self._closed:
            self._in_background(self._spawn_with_retry())

    async def _spawn_with_retry(self) -> None:
        attempt = 0
        while not self._closed:
            box: SandboxProcess | None = None
            try:
                # inside the try: creating the child's pipe fails too when no file descriptor
                # is left (EMFILE), and the pool must not stay a child short for good
                box = SandboxProcess(self._settings, self._settings.sandbox_max_jobs)
                await box.start()
            except asyncio.CancelledError:
                if box is not None:
                    box.kill()  # the pool is closing: no half-started child may outlive it
                raise
            except (SandboxCrashed, TimeoutError, OSError) as exc:
                if box is not None:
                    await box.dispose()
                delay = RESPAWN_BACKOFF_S[min(attempt, len(RESPAWN_BACKOFF_S) - 1)]
                log.error("sandbox child failed to start (%s), retrying in %ss", exc, delay)
                attempt += 1
                await asyncio.sleep(delay)
                continue
            if self._closed:
                await box.dispose()
            else:
                self._ready.put_nowait(box)
            return

    async def run(
        self,
        job_id: str,
        name: str,
        attempt: int,
        data: Any,
        timeout_s: float,
        on_progress: Callable[[Any], None],
        grants: JobGrants | None = None,
    ) -> Any:
        box = await self._ready.get()
        self._busy.add(box)
        healthy = False
        try:
            async with asyncio.timeout(timeout_s):
                result = await box.run(job_id, name, attempt, data, on_progress, grants)
            healthy = True
            return result
        except TimeoutError:
            raise JobTimedOut(f"job ran past its {timeout_s:g}s timeout; child killed") from None
        except (PermanentJobError, ProcessorFailed):
            healthy = True  # the child reported the job's error and waits for the next job
            raise
        finally:
            self._busy.discard(box)
            if healthy and box.usable:
                self._ready.put_nowait(box)
            else:
                box.kill()  # now, not when the reaping task gets to run
                self._in_background(box.dispose())
                self._replace()

    async def close(self) -> None:
        self._closed = True
        for task in list(self._background):
            task.cancel()
        boxes = list(self._busy)
        while not self._ready.empty():
            boxes.append(self._ready.get_nowait())
        await asyncio.gather(*(box.dispose() for box in boxes), return_exceptions=True)
