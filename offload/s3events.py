"""S3 object events, from the SQS message body to the jobs of an accepted upload.

Two layers:

* parsing (pure functions): an SQS message body holding an S3 event notification becomes an
  :class:`S3Notification` of typed :class:`S3ObjectEvent` records, or raises
  :class:`MalformedEvent` with the reason. Keys arrive URL-encoded (``unquote_plus``: a space
  is ``+``, a ``+`` is ``%2B``; moto also encodes ``/``). The ``s3:TestEvent`` S3 sends when a
  notification is configured parses as a test notification with no records.
* acceptance (:func:`accept_object`): the object is matched to its upload row (addressed by the
  upload id in its key), its size is checked against what the API was told, the row is marked
  ``uploaded``, the upload's jobs are enqueued, and the row is marked ``queued``. An object
  that does not belong to an upload, or whose size is wrong, gets no job. A newer version of
  the object (the key written again while its presigned POST was valid) replaces the one the
  row names; an older version's event never does.

S3 delivers events at least once, sometimes twice for one object (moto, and S3 for some
multipart completions, send ``ObjectCreated:Put`` *and* ``ObjectCreated:CompleteMultipartUpload``
with the same size and ETag): every step is idempotent and the job id is derived from bucket +
key + version/ETag, so a repeated event finds the row ``queued`` and re-adds the same job ids
(a no-op in PostgreSQL and in Redis).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from offload.content_type import SNIFF_RANGE_BYTES, detect_content_type
from offload.flows import FINAL_UPLOAD_STATES, HOLDING_STATES
from offload.jobs import JobRef
from offload.keys import UPLOADS_PREFIX, KeyLayoutError, UploadKey
from offload.pipelines import FINALIZE, Pipeline, pipeline_for
from offload.user_errors import aws_error_code

# Annotations only: parsing needs no database, and the acceptance functions are handed a store
# and a pool by their caller (so psycopg is loaded by whoever opens the pool, not by this import).
if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from psycopg_pool import AsyncConnectionPool

    from offload.db.uploads import Upload, UploadStore

log = logging.getLogger(__name__)

TEST_EVENT = "s3:TestEvent"
OBJECT_CREATED = "ObjectCreated:"
# The event name given to an object the reconciler found without its event (its event was lost).
FOUND_EVENT = "ObjectCreated:FoundByReconciler"


class MalformedEvent(ValueError):
    """The message is not an S3 event notification we can read; retrying cannot fix it."""


@dataclass(frozen=True)
class S3ObjectEvent:
    """One record of an S3 event notification, key decoded, ETag without quotes."""

    event_name: str
    bucket: str
    key: str
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None
    event_time: str | None = None

    @property
    def is_object_created(self) -> bool:
        return self.event_name.startswith(OBJECT_CREATED)

    @property
    def is_upload(self) -> bool:
        return self.key.startswith(UPLOADS_PREFIX)

    @property
    def complete(self) -> bool:
        """Size and ETag known: no HEAD needed."""
        return self.size is not None and self.etag is not None

    def with_head(self, head: Mapping[str, Any]) -> S3ObjectEvent:
        """Fill what the event lacked from a ``HeadObject`` response."""
        return replace(
            self,
            size=self.size if self.size is not None else int(head["ContentLength"]),
            etag=self.etag or _unquote_etag(head.get("ETag")),
            version_id=self.version_id or _version(head.get("VersionId")),
        )


@dataclass(frozen=True)
class S3Notification:
    records: tuple[S3ObjectEvent, ...] = ()
    test_event: bool = False
    bucket: str | None = None  # for a test event


def _unquote_etag(etag: Any) -> str | None:
    if etag is None:
        return None
    return str(etag).strip('"') or None


def _version(value: Any) -> str | None:
    # S3 omits versionId for unversioned buckets; treat an empty one the same way, and the
    # "null" of an object written while versioning was suspended: every such object has it, so
    # as a job's revision it would give different bytes the same job ids (the ETag does not).
    return str(value) if value and value != "null" else None


def _field(mapping: Any, name: str, where: str) -> Any:
    if not isinstance(mapping, dict) or name not in mapping:
        raise MalformedEvent(f"{where} has no {name!r}")
    return mapping[name]


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"{where} must be a non-empty string")
    return value


def decode_key(raw: str) -> str:
    """An event's object key as stored in S3 (keys in events are URL-encoded, form style)."""
    try:
        return unquote_plus(raw, errors="strict")
    except UnicodeDecodeError as exc:
        raise MalformedEvent(f"object key {raw[:100]!r} is not percent-encoded UTF-8") from exc


def parse_record(record: Any) -> S3ObjectEvent:
    """One entry of ``Records``."""
    if not isinstance(record, dict):
        raise MalformedEvent("record is not an object")
    source = record.get("eventSource")
    if source != "aws:s3":
        raise MalformedEvent(f"record eventSource is {source!r}, not 'aws:s3'")
    event_name = _string(_field(record, "eventName", "record"), "eventName")
    s3 = _field(record, "s3", "record")
    bucket = _string(_field(_field(s3, "bucket", "s3"), "name", "s3.bucket"), "s3.bucket.name")
    obj = _field(s3, "object", "s3")
    key = decode_key(_string(_field(obj, "key", "s3.object"), "s3.object.key"))
    size = obj.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise MalformedEvent(f"s3.object.size must be a non-negative integer, got {size!r}")
    etag = obj.get("eTag")
    if etag is not None and not isinstance(etag, str):
        raise MalformedEvent("s3.object.eTag must be a string")
    version_id = obj.get("versionId")
    if version_id is not None and not isinstance(version_id, str):
        raise MalformedEvent("s3.object.versionId must be a string")
    event_time = record.get("eventTime")
    return S3ObjectEvent(
        event_name=event_name,
        bucket=bucket,
        key=key,
        size=size,
        etag=_unquote_etag(etag),
        version_id=_version(version_id),
        sequencer=obj.get("sequencer") if isinstance(obj.get("sequencer"), str) else None,
        event_time=event_time if isinstance(event_time, str) else None,
    )


def parse_notification(document: Any) -> S3Notification:
    """An S3 event notification already decoded from JSON."""
    if not isinstance(document, dict):
        raise MalformedEvent(f"notification is a {type(document).__name__}, not an object")
    if document.get("Event") == TEST_EVENT:
        bucket = document.get("Bucket")
        return S3Notification(test_event=True, bucket=bucket if isinstance(bucket, str) else None)
    records = document.get("Records")
    if not isinstance(records, list) or not records:
        raise MalformedEvent("notification has no Records")
    return S3Notification(records=tuple(parse_record(record) for record in records))


def parse_message(body: str | None) -> S3Notification:
    """The body of an SQS message that S3 sent (S3 -> SQS notification)."""
    if not body:
        raise MalformedEvent("message body is empty")
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, TypeError) as exc:
        raise MalformedEvent(f"message body is not JSON: {exc}") from exc
    return parse_notification(document)


# ---------------------------------------------------------------------------------------------
# Acceptance


def upload_ref(upload: Upload) -> JobRef:
    """What every job of the upload's object carries. Built from the row, so the enqueue
    Lambda and the reconciler derive the same job ids."""
    return JobRef(
        bucket=upload.bucket,
        key=upload.key,
        version_id=upload.version_id,
        etag=upload.etag,
        owner=upload.owner,
        upload_id=upload.id,
    )


def planned_jobs(upload: Upload, detected_type: str | None = None) -> list[tuple[str, JobRef]]:
    """Every job of the upload's flow, the parent (``finalize``) first, then the steps of the
    pipeline its detected content type picks (``offload.pipelines.pipeline_for``; the row's
    ``detected_type`` unless given)."""
    ref = upload_ref(upload)
    pipeline = pipeline_for(detected_type or upload.detected_type)
    return [(FINALIZE, ref), *((step.name, ref) for step in pipeline.steps)]


@dataclass(frozen=True)
class Outcome:
    """What became of one object event.

    ``accepted``: the upload's flow started (``finalize`` and its steps), upload ``queued``;
    ``deferred``: the upload now names this object (``uploaded``) but an older version's jobs
    are still running, so this object's jobs wait for the reconciler; ``rejected``: upload
    marked ``rejected`` (size mismatch) or the object is under ``uploads/`` without a valid
    upload behind it: no job; ``ignored``: nothing to do (terminal upload, an upload that
    ended processed or failed with this object, superseded version); ``skipped``: not an
    upload object event at all."""

    status: str
    reason: str = ""
    upload_id: str | None = None
    job_ids: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class CurrentObject:
    """What S3 holds under a key now (a HEAD without version id): the newest version."""

    size: int
    etag: str | None
    version_id: str | None
    last_modified: datetime | None = None

    @classmethod
    def from_head(cls, head: Mapping[str, Any]) -> CurrentObject:
        return cls(
            size=int(head["ContentLength"]),
            etag=_unquote_etag(head.get("ETag")),
            version_id=_version(head.get("VersionId")),
            last_modified=head.get("LastModified"),
        )

    def created_event(self, bucket: str, key: str) -> S3ObjectEvent:
        """The ObjectCreated event S3 would have sent for this object (for one that was lost)."""
        return S3ObjectEvent(FOUND_EVENT, bucket, key, self.size, self.etag, self.version_id)

    def describes(self, event: S3ObjectEvent) -> bool:
        """Whether the event is about this object. By version id when both have one; else by
        ETag (moto's events carry no version id): the same ETag is the same bytes, so even an
        older version's event with it describes what the key holds now."""
        if self.version_id and event.version_id:
            return self.version_id == event.version_id
        return self.etag == event.etag

    def identify(self, event: S3ObjectEvent) -> S3ObjectEvent:
        """The event with the version id S3 gave this object, when the event had none."""
        return replace(event, version_id=event.version_id or self.version_id)


@dataclass(frozen=True)
class JobState:
    """One status row of an upload's jobs: which object (revision) it is for, and its state."""

    id: str
    revision: str | None
    state: str

    @property
    def final(self) -> bool:
        return self.state in FINAL


def head_current_object(s3: S3Client, bucket: str, key: str) -> CurrentObject | None:
    """The key's current version (a HEAD without version id, with a boto3 S3 client); None when
    there is none (no object, or a delete marker). Blocking: run it in a thread."""
    from botocore.exceptions import ClientError

    try:
        return CurrentObject.from_head(s3.head_object(Bucket=bucket, Key=key))
    except ClientError as exc:
        if not_found(exc):
            return None
        raise


def sniff_object(s3: S3Client, upload: Upload) -> str | None:
    """The content type of the object the row names, from its first ``SNIFF_RANGE_BYTES``
    (one ranged GET; none for an empty object). Pinned to the row's object: its version id,
    else its ETag (``If-Match``), so a newer write of the key is never sniffed for this one.
    None when that object is gone or was overwritten (its event, or the newer object's,
    decides what happens next). Blocking: run it in a thread."""
    from botocore.exceptions import ClientError

    if upload.size_actual == 0:
        return detect_content_type(b"", complete=True)
    params: dict[str, Any] = {
        "Bucket": upload.bucket,
        "Key": upload.key,
        "Range": f"bytes=0-{SNIFF_RANGE_BYTES - 1}",
    }
    if upload.version_id:
        params["VersionId"] = upload.version_id
    elif upload.etag:
        params["IfMatch"] = f'"{_unquote_etag(upload.etag)}"'
    try:
        body = s3.get_object(**params)["Body"]
    except ClientError as exc:
        if not_found(exc) or aws_error_code(exc) in ("PreconditionFailed", "412", "InvalidRange"):
            return None
        raise
    try:
        head = body.read(SNIFF_RANGE_BYTES)
    finally:
        body.close()
    complete = upload.size_actual is not None and len(head) >= upload.size_actual
    return detect_content_type(head, complete=complete)


def not_found(exc: Exception) -> bool:
    """An S3 ClientError that says the object (or the version) does not exist."""
    return aws_error_code(exc) in ("404", "NoSuchKey", "NoSuchVersion")


# Producer.start_flow: (pipeline, reference, job id -> status row state, the upload: its size
# and tier give the jobs' priority) -> ids of jobs added.
StartFlow = Callable[[Pipeline, JobRef, Mapping[str, str], "Upload"], Awaitable[tuple[str, ...]]]
# The content type sniffed from the first bytes of the object a row names (sniff_object).
Sniff = Callable[["Upload"], Awaitable[str | None]]
UploadJobs = Callable[[str], Awaitable[list[JobState]]]
HeadCurrent = Callable[[str, str], Awaitable[CurrentObject | None]]

IN_FLIGHT = ("queued", "active", "retrying")
FINAL = ("completed", "failed")

SUPERSEDED = "superseded: the key's current object is a newer version"
# Rounds of read-decide-write before a record gives up to SQS's redelivery: each lost round
# means another delivery changed the row in between, which only a handful of deliveries can do.
RACE_ROUNDS = 3

UPLOAD_JOBS = "SELECT id, revision, state FROM jobs WHERE upload_id = %(upload_id)s"


async def upload_jobs(pool: AsyncConnectionPool, upload_id: str) -> list[JobState]:
    """Every status row of the upload's jobs, whatever the version of the object they are for."""
    async with pool.connection() as conn:
        cursor = await conn.execute(UPLOAD_JOBS, {"upload_id": upload_id})
        return [JobState(*row) for row in await cursor.fetchall()]


def older_in_flight(upload: Upload, jobs: list[JobState]) -> list[JobState]:
    """Jobs of an older version of the upload's object that may still run. A version's jobs
    are only enqueued once there are none: all versions' jobs write the upload's outputs to
    the same keys, and the newest version's must be the ones written last."""
    current = upload.revision
    return [job for job in jobs if (job.revision or "") != current and job.state in IN_FLIGHT]


def _same_object(upload: Upload, event: S3ObjectEvent) -> bool:
    if upload.version_id and event.version_id:
        return upload.version_id == event.version_id
    return _unquote_etag(upload.etag) == event.etag


def _size_mismatch(upload: Upload, event: S3ObjectEvent) -> str | None:
    assert event.size is not None
    if upload.size_announced is not None and event.size != upload.size_announced:
        return f"object is {event.size} bytes, {upload.size_announced} were announced"
    return None


class RowContention(RuntimeError):
    """Other deliveries kept changing the upload row; the record is retried by SQS."""


async def accept_object(
    event: S3ObjectEvent,
    uploads: UploadStore,
    start_flow: StartFlow,
    jobs_of: UploadJobs,
    head_current: HeadCurrent,
    sniff: Sniff,
) -> Outcome:
    """Match an ObjectCreated event to its upload, check it, start its flow.

    ``event`` must be complete (size and ETag known: the caller HEADs the object if the event
    lacked them). Errors from PostgreSQL, Redis or S3 propagate: the caller fails the message
    and SQS delivers it again; every step here is safe to repeat.

    The newest version wins. A presigned POST can write the key again while its URL is valid
    (S3 does not honour ``If-None-Match`` on POST), and events arrive unordered and at least
    once. So an event whose object is not the one the row names is only acted on when it is
    the key's *current* object (``head_current``, a HEAD without version id): then the row
    moves to it (or is rejected, on a size mismatch) and its jobs get new ids; otherwise it is
    ignored as superseded. The first object of a ``pending`` row is accepted without that HEAD
    (the normal path makes no S3 call): if it was already superseded, the newer version's own
    event replaces it. A rejection is final, so it is only decided for the current object.

    The pipeline is picked by the object's content type, sniffed from its first bytes
    (``sniff``: one ranged GET per accepted object, stored on the row, so a repeated event
    makes none). Jobs whose status row is already final are not added again
    (``offload.flows.nodes_to_add``): a late duplicate event would otherwise re-run a job whose
    Redis entry retention has removed. Jobs still in flight are re-added (a no-op while Redis
    has them, a repair when it lost them). An upload that reached its final state
    (``processed``/``failed``) with this object ignores the event."""
    if not event.is_object_created:
        return Outcome("skipped", f"event {event.event_name} is not ObjectCreated")
    if not event.is_upload:
        return Outcome("skipped", f"key is outside {UPLOADS_PREFIX}")
    if not event.complete:
        raise ValueError("accept_object needs the object's size and ETag")
    try:
        key = UploadKey.parse(event.key)
    except KeyLayoutError as exc:
        return Outcome("rejected", f"key does not follow the upload layout: {exc}")

    assert event.size is not None
    first = await uploads.accept_first_object(
        key.upload_id,
        owner=key.owner,
        bucket=event.bucket,
        key=event.key,
        size=event.size,
        etag=event.etag,
        version_id=event.version_id,
    )
    if first is not None:  # the common case: a pending row's object, as announced
        return await _start_flow(first, uploads, start_flow, None, sniff)

    upload = await uploads.get(key.upload_id)
    if upload is None:
        return Outcome("rejected", "no upload row for this key", key.upload_id)
    if (upload.bucket, upload.key, upload.owner) != (event.bucket, event.key, key.owner):
        # A key naming someone else's upload id: never touch that upload's row.
        return Outcome("rejected", "key does not match its upload row", key.upload_id)

    for _ in range(RACE_ROUNDS):
        if upload.state in ("rejected", "aborted"):
            return Outcome("ignored", f"upload is {upload.state}", upload.id)
        holding = upload if upload.state in HOLDING_STATES else None
        if holding is not None and _same_object(holding, event):
            if holding.state in FINAL_UPLOAD_STATES:
                return Outcome("ignored", f"upload is {holding.state}", upload.id)
            return await _start_flow(holding, uploads, start_flow, jobs_of, sniff)
        mismatch = _size_mismatch(upload, event)
        if holding is not None or mismatch:
            current = await head_current(event.bucket, event.key)
            if current is None or not current.describes(event):
                return Outcome("ignored", SUPERSEDED, upload.id)
            event = current.identify(event)
        fields: dict[str, Any] = {
            "size_actual": event.size,
            "etag": event.etag,
            "version_id": event.version_id,
        }
        if mismatch:
            rejected = await uploads.mark_rejected(upload.id, mismatch, replacing=holding, **fields)
            if rejected is not None:
                return Outcome("rejected", mismatch, upload.id)
        else:
            marked = await uploads.mark_uploaded(upload.id, replacing=holding, **fields)
            if marked is not None:
                return await _start_flow(marked, uploads, start_flow, jobs_of, sniff)
        # Another delivery changed the row between our read and our write: decide again.
        changed = await uploads.get(upload.id)
        if changed is None:
            return Outcome("ignored", "upload row is gone", upload.id)
        upload = changed
    raise RowContention(f"upload {upload.id} kept changing under concurrent deliveries")


async def _start_flow(
    upload: Upload,
    uploads: UploadStore,
    start_flow: StartFlow,
    jobs_of: UploadJobs | None,
    sniff: Sniff,
) -> Outcome:
    """Start the flow of the object the row names, then mark it ``queued`` (with its detected
    type): deferred while an older version's jobs may still write the upload's outputs.
    ``jobs_of`` None: the row was ``pending`` a moment ago, so it has no jobs of any version
    to look up."""
    jobs = await jobs_of(upload.id) if jobs_of is not None else []
    older = older_in_flight(upload, jobs)
    if older:
        reason = (
            f"{len(older)} job(s) of an older version still in flight; the reconciler"
            " enqueues this version's jobs once they are finished"
        )
        return Outcome("deferred", reason, upload.id)
    detected = upload.detected_type or await sniff(upload)
    states = {job.id: job.state for job in jobs}
    job_ids = await start_flow(pipeline_for(detected), upload_ref(upload), states, upload)
    await uploads.mark_queued(upload, detected_type=detected)
    return Outcome("accepted", "", upload.id, job_ids)
