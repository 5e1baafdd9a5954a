"""Recurring jobs, declared in settings (``OFFLOAD_SCHEDULES``) and run by bullmq's job schedulers.

A schedule is ``{id: {"job": name, "cron": pattern, "tz": zone}}`` or
``{id: {"job": name, "every_ms": n}}``: the id names the bullmq job scheduler (one per id, on
the worker's queue), the job is a system job the worker knows (``fargate_worker.system_jobs``).
The workers register them at start and check them again periodically
(``fargate_worker.schedules``), so the declaration here is the whole truth about what recurs.

Parsing is split in two on purpose. :func:`parse` (called by ``Settings.from_env`` in every
process) checks the shape with the standard library only; :func:`check_patterns` (called by
the worker at start) checks the cron patterns with croniter, as bullmq will evaluate them,
so the Lambdas, which also read the settings, do not import croniter (~40 ms of cold start)
for schedules they never run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# No ':' (bullmq builds job ids "repeat:<id>:<millis>" and reads ids with ':' as legacy
# repeatable-job keys), nothing a Redis key or a log line would need quoted.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_JOB_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
EVERY_MS_MIN = 1_000  # a schedule that fires more often than every second is a mistake
EVERY_MS_MAX = 366 * 86_400_000
_FIELDS = {"job", "cron", "every_ms", "tz"}

# The built-in schedule (docs/settings.md): retention once a day, off-peak for most users.
DEFAULT_SCHEDULES_JSON = '{"retention": {"job": "retention", "cron": "17 3 * * *"}}'


class ScheduleError(ValueError):
    """``OFFLOAD_SCHEDULES`` is not usable (``Settings.from_env`` re-raises it as a
    SettingsError naming the variable)."""


@dataclass(frozen=True)
class Schedule:
    """One recurring job: bullmq's ``RepeatOptions`` (``pattern`` + ``tz``, or ``every``)."""

    id: str
    job: str
    cron: str | None = None
    every_ms: int | None = None
    tz: str | None = None

    def repeat_options(self) -> dict[str, Any]:
        if self.cron is not None:
            return {"pattern": self.cron, **({"tz": self.tz} if self.tz else {})}
        return {"every": self.every_ms}


def parse(raw: str) -> tuple[Schedule, ...]:
    """The schedules of ``raw`` (JSON), in id order; ``ScheduleError`` says what is wrong."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ScheduleError(f"must be a JSON object, got {raw[:80]!r}") from exc
    if not isinstance(value, dict):
        raise ScheduleError(f"must be a JSON object of schedules, got {type(value).__name__}")
    return tuple(_schedule(key, value[key]) for key in sorted(value))


def _schedule(key: str, spec: Any) -> Schedule:
    if not _ID.fullmatch(key):
        raise ScheduleError(f"schedule id {key!r} must match {_ID.pattern}")
    where = f"schedule {key!r}"
    if not isinstance(spec, dict):
        raise ScheduleError(f"{where} must be an object, got {type(spec).__name__}")
    unknown = set(spec) - _FIELDS
    if unknown:
        raise ScheduleError(
            f"{where} has unknown fields {sorted(unknown)} (known: job, cron, every_ms, tz)"
        )
    job = spec.get("job")
    if not isinstance(job, str) or not _JOB_NAME.fullmatch(job):
        raise ScheduleError(f"{where} needs a job name matching {_JOB_NAME.pattern}")
    cron, every, tz = spec.get("cron"), spec.get("every_ms"), spec.get("tz")
    if (cron is None) == (every is None):
        raise ScheduleError(f"{where} needs exactly one of cron and every_ms")
    if every is not None:
        if type(every) is not int or not EVERY_MS_MIN <= every <= EVERY_MS_MAX:
            raise ScheduleError(
                f"{where}: every_ms must be an integer from {EVERY_MS_MIN} to {EVERY_MS_MAX}"
            )
        if tz is not None:
            raise ScheduleError(f"{where}: tz applies to cron only")
        return Schedule(key, job, every_ms=every)
    if not isinstance(cron, str) or not cron.strip() or len(cron) > 120:
        raise ScheduleError(f"{where}: cron must be a non-empty pattern")
    if tz is not None:
        if not isinstance(tz, str):
            raise ScheduleError(f"{where}: tz must be an IANA zone name")
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ScheduleError(f"{where}: unknown time zone {tz!r}") from exc
    return Schedule(key, job, cron=cron.strip(), tz=tz)


def check_patterns(schedules: tuple[Schedule, ...]) -> None:
    """Every cron pattern evaluated once as bullmq will (its ``default_repeat_strategy``:
    croniter, 6 fields = seconds first, in the schedule's zone): a pattern it cannot read fails
    the worker's start, not the registration minutes later."""
    import time

    from bullmq.job_scheduler import default_repeat_strategy

    now = int(time.time() * 1000)
    for schedule in schedules:
        if schedule.cron is None:
            continue
        try:
            default_repeat_strategy(now, schedule.repeat_options())
        except Exception as exc:  # croniter raises several unrelated types
            raise ScheduleError(
                f"schedule {schedule.id!r}: cron pattern {schedule.cron!r} is not valid ({exc})"
            ) from exc
