"""X-Ray tracing for the handlers, loaded only when it is on.

The Powertools Tracer imports the X-Ray SDK, which creates botocore clients at import
(~0.3-0.5 s): made eagerly it would weigh on every cold start, traced or not. ``traced`` wraps
a handler so the Tracer is built on the first invocation, and not at all when
``POWERTOOLS_TRACE_DISABLED`` is set (tests, local runs). Responses are never captured: the
API's carry presigned URLs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aws_lambda_powertools import Tracer

Handler = Callable[[dict[str, Any], Any], Any]
_tracer: Tracer | None = None


def tracing_enabled() -> bool:
    disabled = os.environ.get("POWERTOOLS_TRACE_DISABLED", "").strip().lower()
    return disabled not in ("1", "true", "yes", "on")


def current_tracer() -> Tracer | None:
    """The Tracer once a traced handler has run with tracing on; None otherwise."""
    return _tracer


def traced(fn: Handler) -> Handler:
    wrapped: Handler | None = None

    def call(event: dict[str, Any], context: Any) -> Any:
        nonlocal wrapped
        global _tracer
        if wrapped is None:
            wrapped = fn
            if tracing_enabled():
                from aws_lambda_powertools import Tracer

                _tracer = _tracer or Tracer()
                wrapped = _tracer.capture_lambda_handler(fn, capture_response=False)
        return wrapped(event, context)

    return call
