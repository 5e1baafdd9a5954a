"""Lambda "containers": each handler runs in a process of its own with its own environment,
one invocation at a time, and keeps its state between invocations, as a warm Lambda
container does. The handler module is imported unchanged; it never knows it is local.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
import traceback
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

_SPAWN = multiprocessing.get_context("spawn")


class FunctionError(RuntimeError):
    """The handler raised, or its container died: Lambda's "function error"."""


@dataclass
class LambdaContext:
    """The context object a Lambda handler receives (what Powertools and our handlers read)."""

    function_name: str = "offload-local"
    timeout_s: float = 60.0
    memory_limit_in_mb: int = 512
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    started: float = field(default_factory=time.monotonic)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return f"{time.strftime('%Y/%m/%d')}/[$LATEST]local"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_s - (time.monotonic() - self.started)) * 1000))


def _serve(
    handler_path: str,
    name: str,
    timeout_s: float,
    env: Mapping[str, str],
    log_path: str | None,
    conn: Connection,
) -> None:
    """The container's main loop: import the handler once (cold start), then invoke it for
    every event that arrives on ``conn``."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the stack, which stops us
    os.environ.update(env)
    if log_path:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    import importlib

    module_name, function_name = handler_path.rsplit(".", 1)
    handler = getattr(importlib.import_module(module_name), function_name)
    while True:
        try:
            event = conn.recv()
        except EOFError:
            return
        try:
            result = handler(event, LambdaContext(name, timeout_s))
            conn.send(("ok", result))
        except Exception as exc:  # what Lambda reports as a function error
            traceback.print_exc()
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class Container:
    """One warm container: a process, a pipe, one invocation at a time."""

    def __init__(self, spec: FunctionSpec):
        self.spec = spec
        self._conn, child_conn = _SPAWN.Pipe()
        self._process = _SPAWN.Process(
            target=_serve,
            args=(
                spec.handler,
                spec.name,
                spec.timeout_s,
                dict(spec.env),
                str(spec.log_path) if spec.log_path else None,
                child_conn,
            ),
            name=f"lambda-{spec.name}",
            daemon=True,
        )
        self._process.start()
        child_conn.close()

    @property
    def alive(self) -> bool:
        return self._process.is_alive()

    def invoke(self, event: Any) -> Any:
        self._conn.send(event)
        if not self._conn.poll(self.spec.timeout_s):
            self.stop()  # Lambda kills a container that runs past its timeout
            raise FunctionError(f"{self.spec.name}: timed out after {self.spec.timeout_s} s")
        try:
            status, payload = self._conn.recv()
        except EOFError as exc:
            raise FunctionError(f"{self.spec.name}: the container died") from exc
        if status == "error":
            raise FunctionError(f"{self.spec.name}: {payload}")
        return payload

    def stop(self) -> None:
        self._conn.close()
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    handler: str  # "package.module.function", as in the CDK stacks
    env: Mapping[str, str]
    timeout_s: float = 30.0
    max_concurrency: int = 1
    log_path: Path | None = None


class LambdaFunction:
    """A function's containers: up to ``max_concurrency`` warm ones, started on demand and
    replaced when one dies, like Lambda's scaling."""

    def __init__(self, spec: FunctionSpec):
        self.spec = spec
        self._idle: queue.LifoQueue[Container] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(spec.max_concurrency)
        self._all: list[Container] = []
        self._lock = threading.Lock()
        self._closed = False

    def warm_up(self) -> None:
        self._idle.put(self._new_container())

    def _new_container(self) -> Container:
        with self._lock:
            if self._closed:
                raise FunctionError(f"{self.spec.name}: stopped")
            container = Container(self.spec)
            self._all.append(container)
            return container

    def invoke(self, event: Any) -> Any:
        with self._slots:
            try:
                container = self._idle.get_nowait()
            except queue.Empty:
                container = self._new_container()
            try:
                return container.invoke(event)
            finally:
                if container.alive and not self._closed:
                    self._idle.put(container)
                else:
                    container.stop()

    def stop(self) -> None:
        with self._lock:
            self._closed = True
            containers, self._all = self._all, []
        for container in containers:
            container.stop()
