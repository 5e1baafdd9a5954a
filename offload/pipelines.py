"""Pipelines: which steps an upload runs, declared in one place by its detected content type.

An upload's pipeline is a flow (bullmq ``FlowProducer``): its steps are the children, run in
parallel in the worker's sandbox, and ``finalize`` is the parent, run once every step has
succeeded. The content type that picks the pipeline is the one sniffed from the object's first
bytes by the enqueue path (``uploads.detected_type``), never the one the client announced.

Adding a step is one :class:`Step` entry below plus a processor registered under its name
(``fargate_worker/processors``). A step that calls a third-party service declares
:class:`StepLimits`; it then runs from a queue of its own (bullmq's global concurrency and rate
limit are per queue) under the same hash-tagged prefix, so the flow still spans one Redis slot.
"""

from __future__ import annotations

from dataclasses import dataclass

from offload.jobs import INSPECT, THUMBNAIL

FINALIZE = "finalize"


@dataclass(frozen=True)
class StepLimits:
    """Limits across every worker: at most ``max_concurrent`` jobs of the step at once, at most
    ``max_per_window`` started per ``window_ms``. None: no such limit."""

    max_concurrent: int | None = None
    max_per_window: int | None = None
    window_ms: int = 1000

    def __post_init__(self) -> None:
        for name in ("max_concurrent", "max_per_window"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.window_ms < 1:
            raise ValueError(f"window_ms must be at least 1, got {self.window_ms}")


@dataclass(frozen=True)
class Step:
    """One step of a pipeline: a job name with a processor behind it."""

    name: str
    limits: StepLimits | None = None

    def queue(self, base_queue: str) -> str:
        """The queue the step's jobs wait in: the main queue, or one of its own when limited."""
        return f"{base_queue}-{self.name}" if self.limits else base_queue


@dataclass(frozen=True)
class Pipeline:
    """The steps an upload runs before ``finalize``."""

    name: str
    steps: tuple[Step, ...]


DEFAULT = Pipeline("default", (Step(INSPECT),))
IMAGE = Pipeline("image", (Step(INSPECT), Step(THUMBNAIL)))

# (detected content type prefix, pipeline), first match wins; "" matches everything.
PIPELINES: tuple[tuple[str, Pipeline], ...] = (
    ("image/", IMAGE),
    ("", DEFAULT),
)


def pipeline_for(detected_type: str | None) -> Pipeline:
    """The pipeline of an upload whose first bytes look like ``detected_type``."""
    content_type = (detected_type or "").lower()
    for prefix, pipeline in PIPELINES:
        if content_type.startswith(prefix):
            return pipeline
    return DEFAULT


def all_steps() -> tuple[Step, ...]:
    """Every step any pipeline declares, once each (by name)."""
    seen: dict[str, Step] = {}
    for _, pipeline in PIPELINES:
        for step in pipeline.steps:
            seen.setdefault(step.name, step)
    return tuple(seen.values())
