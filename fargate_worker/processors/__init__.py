"""Processor registry: job name -> the function that does the work, in a sandbox child.

Processors are plain synchronous functions ``fn(ctx: JobContext) -> JSON-able result``. They
run in a child process (never on the worker's event loop), so they may burn CPU for minutes.
Modules named in ``OFFLOAD_PROCESSOR_MODULES`` register their processors on import; both the
worker (to reject unknown names without retries) and each sandbox child import them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fargate_worker.context import JobContext

ProcessorFn = Callable[["JobContext"], Any]


@dataclass(frozen=True)
class Processor:
    name: str
    fn: ProcessorFn
    timeout_s: int | None = None


_REGISTRY: dict[str, Processor] = {}


def processor(name: str, *, timeout_s: int | None = None) -> Callable[[ProcessorFn], ProcessorFn]:
    """Register ``fn`` under ``name``; ``timeout_s`` overrides the worker's default timeout."""

    def register(fn: ProcessorFn) -> ProcessorFn:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.fn is not fn:
            raise ValueError(f"processor {name!r} is already registered by {existing.fn!r}")
        _REGISTRY[name] = Processor(name, fn, timeout_s)
        return fn

    return register


def load(modules: Iterable[str]) -> dict[str, Processor]:
    """Import the processor modules; returns the registry (name -> Processor)."""
    for module in modules:
        importlib.import_module(module)
    return dict(_REGISTRY)
