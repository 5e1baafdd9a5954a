"""Jobs a user asks for (``POST /jobs``): the registered names, each with its parameter schema,
and the reference such a job carries.

A requested job has no upload behind it, but it is its user's job like an upload step: a status
row (``owner`` = the caller), followed with ``GET /jobs/{id}``, retried with
``POST /jobs/{id}/retry``. Its reference (:class:`offload.jobs.JobRef`) names what it writes,
and its parameters are part of that name: ``export`` writes
``processed/<owner>/exports/<from>_<to>_<nonce>.csv`` in the upload bucket. So, as for every
job, the row alone is enough to run it again (the reconciler rebuilds a lost job from its
row's bucket, key and owner: ``offload.reconcile.ref_for_job_row``), and the worker reads the
parameters back from the key, validating them again: the queue is not trusted any more than a
request.

Today one name: ``export``, the caller's jobs created in a period (UTC days, both included,
at most :data:`MAX_EXPORT_DAYS`) as one CSV, delivered as a presigned link on the job
(``GET /jobs/{id}``: ``links``).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import date
from typing import Any

from offload.jobs import InvalidJobData, JobRef
from offload.keys import PROCESSED_PREFIX

EXPORT = "export"
REQUESTED_JOB_NAMES = (EXPORT,)
MAX_EXPORT_DAYS = 366
# The key's last part: <from>_<to>_<nonce>.csv (dates as YYYY-MM-DD).
_EXPORT_FILE = re.compile(
    r"(?P<start>[0-9]{4}-[0-9]{2}-[0-9]{2})_(?P<end>[0-9]{4}-[0-9]{2}-[0-9]{2})"
    r"_(?P<nonce>[0-9a-f]{16})\.csv"
)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class InvalidParameters(ValueError):
    """A request's job name or parameters are not acceptable (400); ``field`` names the one."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Export:
    """``export``'s parameters: the period, both days included."""

    start: date
    end: date

    def file_name(self, nonce: str) -> str:
        return f"{self.start.isoformat()}_{self.end.isoformat()}_{nonce}.csv"


def exports_prefix(owner: str) -> str:
    return f"{PROCESSED_PREFIX}{owner}/exports/"


def parse_request(body: Any) -> tuple[str, Export]:
    """The body of ``POST /jobs`` (``{"name": ..., "params": {...}}``) as a registered name and
    its parameters; :class:`InvalidParameters` otherwise."""
    if not isinstance(body, dict):
        raise InvalidParameters("request body must be a JSON object", "body")
    unknown = set(body) - {"name", "params"}
    if unknown:
        raise InvalidParameters(f"unknown fields: {', '.join(sorted(map(str, unknown)))}", "body")
    name = body.get("name")
    if not isinstance(name, str) or name not in REQUESTED_JOB_NAMES:
        known = ", ".join(REQUESTED_JOB_NAMES)
        raise InvalidParameters(f"name must be a job that can be requested ({known})", "name")
    return name, _export_params(body.get("params"))


def _export_params(params: Any) -> Export:
    if not isinstance(params, dict):
        raise InvalidParameters("params must be an object with from and to", "params")
    unknown = set(params) - {"from", "to"}
    if unknown:
        raise InvalidParameters(f"unknown params: {', '.join(sorted(map(str, unknown)))}", "params")
    start, end = _day(params, "from"), _day(params, "to")
    if end < start:
        raise InvalidParameters("params.to must not be before params.from", "params.to")
    if (end - start).days + 1 > MAX_EXPORT_DAYS:
        raise InvalidParameters(f"the period may span at most {MAX_EXPORT_DAYS} days", "params.to")
    return Export(start, end)


def _day(params: dict[str, Any], name: str) -> date:
    value = params.get(name)
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        raise InvalidParameters(f"params.{name} must be a date YYYY-MM-DD", f"params.{name}")
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidParameters(f"params.{name} is not a valid date", f"params.{name}") from exc


def export_ref(bucket: str, owner: str, export: Export, nonce: str | None = None) -> JobRef:
    """The reference of a new export: a fresh nonce, so each request is a job of its own."""
    nonce = nonce or secrets.token_hex(8)
    return JobRef(bucket=bucket, key=exports_prefix(owner) + export.file_name(nonce), owner=owner)


def export_from_ref(ref: JobRef) -> Export:
    """The parameters of an export job, read back from its reference (the worker's check: the
    reference must be in its owner's exports and name a valid period)."""
    if not ref.owner or ref.upload_id is not None:
        raise InvalidJobData("an export job needs an owner and no upload")
    prefix = exports_prefix(ref.owner)
    if not ref.key.startswith(prefix):
        raise InvalidJobData("an export job's key must be in its owner's exports")
    match = _EXPORT_FILE.fullmatch(ref.key[len(prefix) :])
    if match is None:
        raise InvalidJobData("an export job's key does not name a period")
    try:
        return _export_params({"from": match["start"], "to": match["end"]})
    except InvalidParameters as exc:
        raise InvalidJobData(f"an export job's period is not valid: {exc}") from exc
