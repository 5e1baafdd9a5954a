"""Per-step limits as deployed: the pipelines' declarations, overridden by settings, and the
queues they give.

bullmq's global concurrency and global rate limit are properties of a queue (fields of its
``meta`` hash, read by ``moveToActive``), so a step with limits runs from a queue of its own,
``<queue>-<step>`` under the same hash-tagged prefix (:meth:`offload.pipelines.Step.queue`);
every other step shares the main queue. ``OFFLOAD_STEP_LIMITS`` lets a deployer cap a step
that calls a third-party API without a code change, and limit steps no pipeline declares
(jobs outside pipelines, test processors): ``{"step": {"maxConcurrent": K, "maxPerWindow": N,
"windowMs": W}}``, or ``{"step": null}`` to drop a declared limit.

Everybody derives queues from here: producers (which queue a job is added to), the worker
(which queues it consumes, and the limits it writes into each queue's meta at start), the
reconciler and the queue metrics (which queues they look at). Changing the setting moves a
step between queues for new jobs only; jobs already waiting in the old queue are consumed only
while it is still configured (docs/worker.md, "Step queues": loosen a limit rather than
removing it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from offload.pipelines import Step, StepLimits, all_steps

if TYPE_CHECKING:
    from offload.settings import Settings

# A step's name becomes part of a queue name and so of Redis keys (<prefix>:<queue>-<step>:…):
# no ":" (bullmq's separator), no glob or hash-tag characters.
STEP_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
# Far beyond any real cap; keeps a typo (an extra digit of zeros) from meaning "unlimited".
MAX_CONCURRENT = 10_000
MAX_PER_WINDOW = 1_000_000
MAX_WINDOW_MS = 86_400_000
_FIELDS = {
    "maxConcurrent": "max_concurrent",
    "maxPerWindow": "max_per_window",
    "windowMs": "window_ms",
}

StepLimitOverrides = tuple[tuple[str, StepLimits | None], ...]


def _bounded(value: Any, name: str, maximum: int) -> int:
    if type(value) is not int or not 1 <= value <= maximum:
        raise ValueError(f"{name} must be an integer from 1 to {maximum}, got {value!r}")
    return value


def _limits(step: str, value: Any) -> StepLimits | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"{step!r}: expected an object or null, got {type(value).__name__}")
    unknown = set(value) - set(_FIELDS)
    if unknown:
        raise ValueError(f"{step!r}: unknown field(s) {sorted(unknown)}; known: {list(_FIELDS)}")
    if "maxConcurrent" not in value and "maxPerWindow" not in value:
        raise ValueError(f"{step!r}: give maxConcurrent, maxPerWindow or both (or null)")
    if "windowMs" in value and "maxPerWindow" not in value:
        raise ValueError(f"{step!r}: windowMs needs maxPerWindow")
    bounds = {"maxConcurrent": MAX_CONCURRENT, "maxPerWindow": MAX_PER_WINDOW}
    bounds["windowMs"] = MAX_WINDOW_MS
    return StepLimits(
        **{
            _FIELDS[key]: _bounded(item, f"{step}.{key}", bounds[key])
            for key, item in value.items()
        }
    )


def parse_step_limits(text: str) -> StepLimitOverrides:
    """``OFFLOAD_STEP_LIMITS`` (JSON) -> (step, limits or None) pairs, sorted by step."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError("must be a JSON object of step name -> limits")
    for step in document:
        if not STEP_NAME.fullmatch(step):
            raise ValueError(f"step name {step!r} must match {STEP_NAME.pattern}")
    return tuple(sorted((step, _limits(step, value)) for step, value in document.items()))


def format_step_limits(overrides: StepLimitOverrides) -> str:
    """The ``OFFLOAD_STEP_LIMITS`` value :func:`parse_step_limits` reads back as ``overrides``
    (for a process started with given settings: tests, the local stack)."""
    fields = {value: key for key, value in _FIELDS.items()}
    document: dict[str, Any] = {}
    for step, limits in overrides:
        if limits is None:
            document[step] = None
            continue
        values = {
            fields[name]: getattr(limits, name)
            for name in ("max_concurrent", "max_per_window")
            if getattr(limits, name) is not None
        }
        if limits.max_per_window is not None:
            values["windowMs"] = limits.window_ms
        document[step] = values
    return json.dumps(document)


def steps(settings: Settings) -> Mapping[str, Step]:
    """Every step with its limits as deployed: declared ones, then the settings' overrides
    (which may name steps outside any pipeline)."""
    effective = {step.name: step for step in all_steps()}
    for name, limits in settings.step_limits:
        effective[name] = Step(name, limits)
    return effective


def limited_steps(settings: Settings) -> tuple[Step, ...]:
    """The steps that run from a queue of their own, by name."""
    return tuple(step for _, step in sorted(steps(settings).items()) if step.limits)


def queue_for(settings: Settings, job_name: str) -> str:
    """The queue a job named ``job_name`` is added to."""
    step = steps(settings).get(job_name)
    return step.queue(settings.queue_name) if step else settings.queue_name


def all_queues(settings: Settings) -> tuple[str, ...]:
    """The main queue, then every step queue: what workers consume and the reconciler and the
    queue metrics cover."""
    return (settings.queue_name, *(s.queue(settings.queue_name) for s in limited_steps(settings)))


async def apply_limits(queue: Any, limits: StepLimits | None) -> None:
    """Write a step's limits into its queue's meta hash (bullmq ``Queue.setGlobalConcurrency``
    / ``setGlobalRateLimit``), removing the ones it no longer has. Idempotent: every worker
    does it at start, and the last writer wins (during a rolling deploy that changes a limit,
    old and new tasks may overwrite each other until the old ones are gone)."""
    limits = limits or StepLimits()
    if limits.max_concurrent is not None:
        await queue.setGlobalConcurrency(limits.max_concurrent)
    else:
        await queue.removeGlobalConcurrency()
    if limits.max_per_window is not None:
        await queue.setGlobalRateLimit(limits.max_per_window, limits.window_ms)
    else:
        await queue.removeGlobalRateLimit()
