"""API Lambda containers for tests whose requests must really be in flight together: Lambda
serves concurrent requests in separate containers, and so do these (``offload_local``'s
containers: a process each, warm between invocations)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from offload_local.containers import Container, FunctionSpec
from tests.support.apigw import ApiResponse, decode


@contextmanager
def api_containers(
    env: Mapping[str, str], count: int, handler: str = "lambdas.api.handler"
) -> Iterator[list[Container]]:
    """``count`` containers of the API function with the Lambda environment ``env``."""
    spec = FunctionSpec("offload-api", handler, dict(env), timeout_s=120.0)
    containers: list[Container] = []
    try:
        for _ in range(count):
            containers.append(Container(spec))
        yield containers
    finally:
        for container in containers:
            container.stop()


def invoke_together(
    containers: Sequence[Container], events: Sequence[dict[str, Any]]
) -> list[ApiResponse]:
    """Each container handles its event, all released at the same instant by a barrier."""
    barrier = threading.Barrier(len(containers))

    def invoke(container: Container, event: dict[str, Any]) -> ApiResponse:
        barrier.wait(timeout=60)
        return decode(container.invoke(event))

    with ThreadPoolExecutor(len(containers)) as threads:
        futures = [threads.submit(invoke, c, e) for c, e in zip(containers, events, strict=True)]
        return [future.result() for future in futures]
