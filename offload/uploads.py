"""The upload API's domain: request validation, upload planning and the S3 side of uploads.

A browser or CLI never sends file bytes through the API: it asks for an upload, gets presigned
URLs, and sends the bytes straight to S3.

* Files up to ``single_upload_max_bytes`` get one presigned **POST** whose policy pins the key,
  the Content-Type and the exact size (``content-length-range`` [size, size]); a presigned PUT
  could not cap the size.
* Larger files get an S3 **multipart upload** with part URLs handed out in batches. The part
  size is chosen when the upload is created (:func:`plan_parts`: at least
  ``part_size_bytes``, more when 10,000 parts would not hold the file) and stored on the row;
  every later request plans from the stored size (:func:`upload_plan`), so changing the setting
  never breaks an upload in flight. Rows created before the size was stored have none and keep
  the rule they were created under (5 MiB minimum). Each part URL has its part's exact size
  signed into it (``Content-Length`` in ``X-Amz-SignedHeaders``), so S3 refuses a PUT of any
  other length: what a client parks in S3 is bounded by the plan, not by S3's 5 GiB per part.
  The client can ask which parts S3 already has (resume), then complete or abort.
* Every signing of part URLs (and every complete) records, before any URL exists, when the
  latest URLs expire (``part_urls_expire_at``). The reconciler aborts a pending multipart
  upload whose latest URLs expired more than ``expired_upload_grace_s`` ago
  (``offload.expired_uploads``); both sides are conditional UPDATEs of the same row, so a
  client that resumes or completes and the reconciler never both win.

Every lookup is scoped by the caller's ``sub``; an upload of someone else looks exactly like an
upload that does not exist (:class:`NotFound`), so ids cannot be probed.

This module imports neither boto3 nor psycopg: the S3 client and the store are passed in, which
keeps the Lambda's cold start short and the logic testable on its own.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from offload.flows import HOLDING_STATES
from offload.keys import KEY_SEGMENT_ID, UploadKey
from offload.pages import encode_cursor, parse_list_params
from offload.user_errors import aws_error_code, redact

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from offload.db.uploads import Upload, UploadStore
    from offload.settings import Settings

MiB = 1 << 20
MIN_PART_BYTES = 5 * MiB  # S3: every part but the last is at least 5 MiB
MAX_PART_BYTES = 5 * 1024 * MiB  # S3: a part is at most 5 GiB
MAX_PARTS = 10_000  # S3: part numbers 1..10,000
MAX_OBJECT_BYTES = 5 * 1024**4  # S3: an object is at most 5 TiB
MAX_SINGLE_BYTES = 5 * 1024**3  # S3: a single POST/PUT is at most 5 GiB
MAX_FILENAME_CHARS = 16_384  # longer names are refused, shorter ones are sanitised and cut
MAX_ETAG_CHARS = 1_024
LIST_PARTS_PAGE = 1_000  # S3's own maximum page size for ListParts

# Every state an upload row can be in (the CHECK of uploads.state, migration 0004), and the
# final ones: nothing more happens to such an upload unless a failed step is retried.
UPLOAD_STATES = ("pending", "uploaded", "queued", "processed", "failed", "rejected", "aborted")
FINAL_STATES = ("processed", "failed", "rejected", "aborted")

# type "/" subtype, both RFC 9110 tokens (lower case after normalisation); no wildcards.
_TOKEN = r"[a-z0-9!#$%&'*+.^_`|~-]+"
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}")


# --- errors -----------------------------------------------------------------------------------


class RequestError(Exception):
    """The caller's request cannot be served as asked. ``status`` is the HTTP status the API
    answers with; ``field`` names the offending request field, when there is one."""

    status = 400

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidRequest(RequestError):
    """Malformed body, wrong type, value out of range (400)."""


class NotFound(RequestError):
    """No such resource *for this caller* (404): foreign and absent look the same."""

    status = 404


class Conflict(RequestError):
    """The resource's state does not allow the operation (409)."""

    status = 409


# --- validation -------------------------------------------------------------------------------


def normalize_content_type(raw: str) -> str:
    """``type/subtype`` in lower case, parameters (``; charset=...``) dropped. Raises
    InvalidRequest when what is left is not a concrete media type."""
    base = raw.split(";", 1)[0].strip().lower()
    if len(base) > 255 or not _MEDIA_TYPE.fullmatch(base) or "*" in base:
        raise InvalidRequest(
            "contentType must be a media type such as image/png", field="contentType"
        )
    return base


def content_type_allowed(content_type: str, allowed: Iterable[str]) -> bool:
    """``content_type`` (normalised) against the allowed list: exact entries, ``type/*`` and
    ``*/*``, compared case-insensitively."""
    major = content_type.split("/", 1)[0]
    for entry in allowed:
        pattern = entry.split(";", 1)[0].strip().lower()
        if pattern in ("*/*", "*", content_type, f"{major}/*"):
            return True
    return False


def _require_int(value: Any, field: str) -> int:
    # bool is an int in Python but never a size or a part number in JSON.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{field} must be an integer", field=field)
    return value


def _require_object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


@dataclass(frozen=True)
class CreateRequest:
    filename: str
    size: int
    content_type: str


def parse_create_request(body: Any, settings: Settings) -> CreateRequest:
    """Validate ``{filename, size, contentType}``; the content type comes back normalised."""
    body = _require_object(body)
    filename = body.get("filename")
    if not isinstance(filename, str) or not filename.strip():
        raise InvalidRequest("filename must be a non-empty string", field="filename")
    if len(filename) > MAX_FILENAME_CHARS:
        raise InvalidRequest(
            f"filename must be at most {MAX_FILENAME_CHARS} characters", field="filename"
        )
    if "size" not in body:
        raise InvalidRequest("size is required", field="size")
    size = _require_int(body["size"], "size")
    limit = max_upload_bytes(settings)
    if size <= 0:
        raise InvalidRequest("size must be greater than 0", field="size")
    if size > limit:
        raise InvalidRequest(f"size must be at most {limit} bytes", field="size")
    raw_type = body.get("contentType")
    if not isinstance(raw_type, str) or not raw_type.strip():
        raise InvalidRequest("contentType must be a non-empty string", field="contentType")
    content_type = normalize_content_type(raw_type)
    if not content_type_allowed(content_type, settings.allowed_content_types):
        raise InvalidRequest(f"contentType {content_type} is not allowed", field="contentType")
    return CreateRequest(filename=filename, size=size, content_type=content_type)


def parse_part_numbers(body: Any, plan: PartPlan, batch: int) -> list[int]:
    """``{partNumbers: [int, ...]}``: 1..batch distinct numbers, each within the plan."""
    numbers = _require_object(body).get("partNumbers")
    if not isinstance(numbers, list) or not numbers:
        raise InvalidRequest("partNumbers must be a non-empty list", field="partNumbers")
    if len(numbers) > batch:
        raise InvalidRequest(f"at most {batch} part numbers per request", field="partNumbers")
    checked = [_require_int(number, "partNumbers") for number in numbers]
    for number in checked:
        if not 1 <= number <= plan.part_count:
            raise InvalidRequest(
                f"part number {number} is outside 1..{plan.part_count}", field="partNumbers"
            )
    if len(set(checked)) != len(checked):
        raise InvalidRequest("partNumbers must not repeat", field="partNumbers")
    return checked


def parse_completed_parts(body: Any, plan: PartPlan) -> list[tuple[int, str]]:
    """``{parts: [{partNumber, etag}, ...]}`` naming every part of the plan exactly once;
    returned in part order with each ETag quoted the way S3 writes it."""
    parts = _require_object(body).get("parts")
    if not isinstance(parts, list) or not parts:
        raise InvalidRequest("parts must be a non-empty list", field="parts")
    seen: dict[int, str] = {}
    for part in parts:
        if not isinstance(part, dict):
            raise InvalidRequest("each part must be an object {partNumber, etag}", field="parts")
        number = _require_int(part.get("partNumber"), "parts.partNumber")
        if not 1 <= number <= plan.part_count:
            raise InvalidRequest(
                f"part number {number} is outside 1..{plan.part_count}", field="parts.partNumber"
            )
        if number in seen:
            raise InvalidRequest(f"part {number} is listed twice", field="parts.partNumber")
        etag = part.get("etag")
        if not isinstance(etag, str) or not etag.strip('" ') or len(etag) > MAX_ETAG_CHARS:
            raise InvalidRequest(f"part {number} needs an etag string", field="parts.etag")
        seen[number] = '"' + etag.strip().strip('"') + '"'
    missing = [n for n in range(1, plan.part_count + 1) if n not in seen]
    if missing:
        raise InvalidRequest(
            f"every part must be listed; missing: {_ranges(missing)}", field="parts"
        )
    return sorted(seen.items())


def parse_state_filter(state: str | None) -> str | None:
    """``GET /uploads?state=``: one of :data:`UPLOAD_STATES` (exactly, lower case), or absent."""
    if state is not None and state not in UPLOAD_STATES:
        raise InvalidRequest(f"state must be one of {', '.join(UPLOAD_STATES)}", field="state")
    return state


def _ranges(numbers: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(n) for n in numbers[:limit])
    return shown + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")


# --- planning ---------------------------------------------------------------------------------


def max_upload_bytes(settings: Settings) -> int:
    return min(settings.max_upload_bytes, MAX_OBJECT_BYTES)


def single_upload_limit(settings: Settings) -> int:
    return min(settings.single_upload_max_bytes, MAX_SINGLE_BYTES)


@dataclass(frozen=True)
class PartPlan:
    size: int
    part_size: int
    part_count: int

    def part_bytes(self, number: int) -> int:
        """Size of part ``number`` (1-based): ``part_size``, the last one the remainder."""
        if number < self.part_count:
            return self.part_size
        return self.size - self.part_size * (self.part_count - 1)


def plan_parts(size: int, min_part_bytes: int = MIN_PART_BYTES) -> PartPlan:
    """The smallest whole-MiB part size of at least ``min_part_bytes`` (itself whole MiB,
    5 MiB..5 GiB) that needs at most 10,000 parts: ``max(min_part_bytes, the smallest whole
    MiB that needs at most 10,000 parts)``. Pure: the same arguments give the same plan."""
    if not 0 < size <= MAX_OBJECT_BYTES:
        raise ValueError(f"size {size} is outside 1..{MAX_OBJECT_BYTES}")
    if min_part_bytes % MiB or not MIN_PART_BYTES <= min_part_bytes <= MAX_PART_BYTES:
        raise ValueError(
            f"min_part_bytes {min_part_bytes} is not a whole number of MiB in 5 MiB..5 GiB"
        )
    part_size = max(min_part_bytes, -(-size // MAX_PARTS))
    part_size = -(-part_size // MiB) * MiB
    assert part_size <= MAX_PART_BYTES
    return PartPlan(size=size, part_size=part_size, part_count=-(-size // part_size))


def upload_plan(upload: Upload) -> PartPlan:
    """The plan of an existing multipart upload: from the part size stored on its row when it
    was created (the plan of that size is that size: it already fits 10,000 parts). Rows from
    before the part size was stored (migration 0002) have none: they were planned with the
    5 MiB minimum, and keep it."""
    return plan_parts(upload.size_announced or 0, upload.part_size or MIN_PART_BYTES)


def new_upload_id() -> str:
    """128 random bits, url-safe (a valid key segment). Never starting with "-": command lines
    (``offload status <id>``) would read such an id as an option."""
    while (upload_id := secrets.token_urlsafe(16)).startswith("-"):
        pass
    return upload_id


def valid_upload_id(upload_id: str) -> bool:
    return bool(KEY_SEGMENT_ID.fullmatch(upload_id))


# --- S3 ---------------------------------------------------------------------------------------


def presign_post(
    s3: S3Client, bucket: str, key: str, content_type: str, size: int, expires_s: int
) -> dict[str, Any]:
    """A presigned POST for exactly this key, Content-Type and size (``url`` and form
    ``fields``; the file goes last in the multipart/form-data body)."""
    return s3.generate_presigned_post(
        Bucket=bucket,
        Key=key,
        Fields={"Content-Type": content_type},
        Conditions=[{"Content-Type": content_type}, ["content-length-range", size, size]],
        ExpiresIn=expires_s,
    )


def presign_parts(
    s3: S3Client,
    bucket: str,
    key: str,
    multipart_id: str,
    plan: PartPlan,
    numbers: Iterable[int],
    expires_s: int,
) -> list[dict[str, Any]]:
    """Presigned ``upload_part`` PUTs, each with its part's exact size from ``plan`` signed in:
    botocore serialises ``ContentLength`` as the ``Content-Length`` header and a presigned URL
    signs every header the request carries, so the URL lists ``content-length`` in
    ``X-Amz-SignedHeaders`` and S3 answers 403 (SignatureDoesNotMatch) to a PUT of any other
    length. Browsers (XHR) and the CLI (urllib3) send exactly the part's bytes with that length."""
    return [
        {
            "partNumber": number,
            "url": s3.generate_presigned_url(
                "upload_part",
                Params={
                    "Bucket": bucket,
                    "Key": key,
                    "UploadId": multipart_id,
                    "PartNumber": number,
                    "ContentLength": plan.part_bytes(number),
                },
                ExpiresIn=expires_s,
                HttpMethod="PUT",
            ),
        }
        for number in numbers
    ]


def outputs_archived(finished_at: datetime | None, archive_after_days: int, now: datetime) -> bool:
    """Whether a job's outputs may already be archived. S3 moves an object on the first
    midnight (UTC) after it is ``archive_after_days`` old, so before that age every output is
    still readable, and from then on none may be (outputs are written as the job finishes)."""
    if archive_after_days <= 0 or finished_at is None:
        return False
    return now - finished_at >= timedelta(days=archive_after_days)


def result_links(
    s3: S3Client, bucket: str, owner: str, upload_id: str, result: Any, expires_s: int
) -> list[dict[str, str]]:
    """Presigned GETs for the outputs a job's result names (its ``*_key`` values). Only keys
    under this owner's upload's output prefix are signed: a result never opens anything
    else, whatever a processor wrote into it."""
    if not isinstance(result, dict):
        return []
    prefix = UploadKey(owner, upload_id, "-").output_key("")
    links = []
    for field_name, key in sorted(result.items()):
        if field_name.endswith("_key") and isinstance(key, str) and key.startswith(prefix):
            url = s3.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s
            )
            links.append({"name": key.rsplit("/", 1)[-1], "url": url})
    return links


def list_uploaded_parts(
    s3: S3Client, bucket: str, key: str, multipart_id: str, page_size: int | None = None
) -> list[dict[str, Any]] | None:
    """Every part S3 holds for the multipart upload (all pages), or None when S3 no longer
    knows the upload (completed, aborted, or expired by the lifecycle rule)."""
    parts: list[dict[str, Any]] = []
    marker = 0
    while True:
        try:
            page = s3.list_parts(
                Bucket=bucket,
                Key=key,
                UploadId=multipart_id,
                MaxParts=page_size or LIST_PARTS_PAGE,
                PartNumberMarker=marker,
            )
        except Exception as exc:
            if aws_error_code(exc) == "NoSuchUpload":
                return None
            raise
        parts.extend(
            {"partNumber": p["PartNumber"], "size": p["Size"], "etag": p["ETag"]}
            for p in page.get("Parts", [])
        )
        if not page.get("IsTruncated"):
            return parts
        next_marker = int(page.get("NextPartNumberMarker") or 0)
        if next_marker <= marker:  # a server that does not move on must not loop us forever
            return parts
        marker = next_marker


def object_exists(s3: S3Client, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if aws_error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


# --- the service ------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def upload_view(upload: Upload) -> dict[str, Any]:
    """What the API shows of an upload row (no bucket, no multipart upload id)."""
    view: dict[str, Any] = {
        "id": upload.id,
        "type": "multipart" if upload.multipart_upload_id else "single",
        "state": upload.state,
        "filename": upload.filename,
        "key": upload.key,
        "size": upload.size_announced,
        "contentType": upload.content_type,
        "createdAt": _iso(upload.created_at),
        "updatedAt": _iso(upload.updated_at),
    }
    if upload.size_actual is not None:
        view["sizeActual"] = upload.size_actual
    if upload.error:
        view["error"] = redact(upload.error, [upload.bucket])  # offload.user_errors
    # The end of its flow: processed (result.json's key, only if it is under the upload's own
    # outputs: a key anywhere else is a bug, never shown) or failed (the step that failed).
    own_outputs = UploadKey(upload.owner, upload.id, upload.filename).output_key("")
    if upload.result_key and upload.result_key.startswith(own_outputs):
        view["resultKey"] = upload.result_key
    if upload.multipart_upload_id and upload.size_announced:
        plan = upload_plan(upload)
        view["partSize"] = plan.part_size
        view["partCount"] = plan.part_count
    if upload.failed_step:
        view["failedStep"] = upload.failed_step
    if upload.finished_at:
        view["finishedAt"] = _iso(upload.finished_at)
    return view


class PipelineReader(Protocol):
    """What the status routes ask of the jobs side (``offload.jobs_service.JobService``):
    each upload's pipeline as the API shows it, by upload id, in one read."""

    async def pipelines(
        self, owner: str, uploads: Sequence[Upload]
    ) -> dict[str, dict[str, Any]]: ...


class UploadService:
    """The upload routes' logic over an S3 client (sync boto3) and an :class:`UploadStore`.
    Methods raise :class:`RequestError` subclasses for everything the caller can fix."""

    def __init__(
        self,
        settings: Settings,
        s3: S3Client,
        store: UploadStore,
        pipelines: PipelineReader | None = None,
    ):
        self.settings = settings
        self.s3 = s3
        self.store = store
        self.bucket = settings.upload_bucket
        # The status routes' view of each upload's jobs; without it (routes that change an
        # upload), answers carry no ``pipeline``.
        self.pipelines = pipelines

    def _expiry(self) -> datetime:
        """When URLs signed now expire. Taken just before signing, so the URLs' own expiry is
        at most a request's duration later (the reconciler's grace period covers that)."""
        return datetime.now(UTC) + timedelta(seconds=self.settings.url_expiry_s)

    async def _owned(self, owner: str, upload_id: str) -> Upload:
        upload = None
        if valid_upload_id(upload_id):
            upload = await self.store.get_for_owner(upload_id, owner)
        if upload is None:
            raise NotFound("upload not found")
        return upload

    @staticmethod
    def _multipart(upload: Upload, action: str) -> str:
        if not upload.multipart_upload_id:
            raise Conflict(f"upload is a single-request upload; it has no parts to {action}")
        return upload.multipart_upload_id

    @staticmethod
    def _pending(upload: Upload, action: str) -> None:
        if upload.state != "pending":
            why = f" ({upload.error})" if upload.error else ""
            raise Conflict(f"upload is {upload.state}{why}; only a pending upload can be {action}")

    async def _still_pending(
        self, upload: Upload, owner: str, action: str, expires_at: datetime
    ) -> None:
        """Record that part URLs valid until ``expires_at`` are handed out (or that a
        complete is under way, which holds the reconciler off the same way), before they
        exist. Raises Conflict when the row stopped being pending since it was read: the
        reconciler aborted it as expired, or the client aborted it."""
        if await self.store.extend_part_urls(upload.id, owner, expires_at) is None:
            self._pending(await self._owned(owner, upload.id), action)
            raise Conflict(f"upload changed meanwhile; it can no longer be {action}")

    async def create(self, owner: str, body: Any, tier: str = "standard") -> dict[str, Any]:
        """A new upload for ``owner``, within the quota of their ``tier`` (offload.quotas)."""
        from offload.quotas import QuotaCheck  # built on this module's errors

        request = parse_create_request(body, self.settings)
        quota = QuotaCheck.for_request(self.settings, tier, request.size)
        quota.check_size()
        upload_id = new_upload_id()
        key = UploadKey.build(owner, upload_id, request.filename)
        single = request.size <= single_upload_limit(self.settings)
        multipart_id = None
        part_size = None
        expires_at = self._expiry()
        if not single:
            # Over quota is refused before S3 holds anything for it; the insert checks again.
            quota.admit(await self.store.usage(owner, quota))
            # Chosen now, stored with the row: later requests plan from the stored size.
            part_size = plan_parts(request.size, self.settings.part_size_bytes).part_size
            multipart_id = self.s3.create_multipart_upload(
                Bucket=self.bucket, Key=str(key), ContentType=request.content_type
            )["UploadId"]
        try:
            upload = await self.store.create(
                upload_id=upload_id,
                owner=owner,
                bucket=self.bucket,
                key=str(key),
                filename=key.filename,
                content_type=request.content_type,
                size_announced=request.size,
                multipart_upload_id=multipart_id,
                part_size=part_size,
                part_urls_expire_at=None if single else expires_at,
                quota=quota,
                tier=str(tier),  # its jobs' priority (offload.priorities)
            )
        except BaseException:
            # No row, no way to ever complete it: do not leave it behind. Best effort (the
            # bucket's lifecycle rule aborts it anyway); the original error is what matters.
            if multipart_id:
                with contextlib.suppress(Exception):
                    self.s3.abort_multipart_upload(
                        Bucket=self.bucket, Key=str(key), UploadId=multipart_id
                    )
            raise
        view = upload_view(upload)
        view["expiresAt"] = _iso(expires_at)
        expiry = self.settings.url_expiry_s
        if single:
            view["post"] = presign_post(
                self.s3, self.bucket, str(key), request.content_type, request.size, expiry
            )
        else:
            assert multipart_id is not None
            batch = range(1, min(view["partCount"], self.settings.part_url_batch) + 1)
            view["partUrls"] = presign_parts(
                self.s3, self.bucket, str(key), multipart_id, upload_plan(upload), batch, expiry
            )
        return view

    def _result_links(self, owner: str, upload: Upload, view: dict[str, Any]) -> None:
        """``links`` (a presigned GET of a processed upload's result.json) and
        ``outputsArchived``, as a job's answer has them (``JobService.answer``): only a key
        under the upload's own output prefix is signed, whatever the row names."""
        view["links"] = []
        view["outputsArchived"] = False
        if upload.state != "processed" or not upload.result_key:
            return
        if outputs_archived(
            upload.finished_at, self.settings.processed_archive_after_days, datetime.now(UTC)
        ):
            view["outputsArchived"] = True  # a link would answer InvalidObjectState
            return
        view["links"] = result_links(
            self.s3,
            self.bucket,
            owner,
            upload.id,
            {"result_key": upload.result_key},
            self.settings.url_expiry_s,
        )

    async def _status_views(self, owner: str, uploads: Sequence[Upload]) -> list[dict[str, Any]]:
        """The uploads as the status routes show them: :func:`upload_view`, the result link
        and, given a :class:`PipelineReader`, each one's ``pipeline`` (one read for all)."""
        pipelines = await self.pipelines.pipelines(owner, uploads) if self.pipelines else {}
        views = []
        for upload in uploads:
            view = upload_view(upload)
            self._result_links(owner, upload, view)
            if self.pipelines:
                view["pipeline"] = pipelines[upload.id]
            views.append(view)
        return views

    async def page(
        self, owner: str, limit: str | None, cursor: str | None, state: str | None
    ) -> dict[str, Any]:
        """``GET /uploads``: one page of the owner's uploads, newest first, each with its
        pipeline, and the cursor of the next page. Parameters are checked before any query."""
        size, after = parse_list_params(limit, cursor)
        wanted = parse_state_filter(state)
        rows, next_cursor = await self.store.list_for_owner(owner, size, after, wanted)
        return {
            "uploads": await self._status_views(owner, rows),
            "nextCursor": encode_cursor(next_cursor) if next_cursor else None,
        }

    async def get(self, owner: str, upload_id: str) -> dict[str, Any]:
        upload = await self._owned(owner, upload_id)
        (view,) = await self._status_views(owner, [upload])
        if upload.state != "pending":
            return view
        parts = None
        if upload.multipart_upload_id:
            parts = list_uploaded_parts(
                self.s3, self.bucket, upload.key, upload.multipart_upload_id
            )
            # None: S3 no longer knows the multipart upload (completed and not yet seen by the
            # enqueue path, or aborted by the lifecycle rule): nothing left to resume.
            view["uploadedParts"] = parts or []
            view["multipartOpen"] = parts is not None
        # The row stays pending until the S3 event is processed (seconds, longer when the
        # enqueue path is down): say whether S3 already holds the object, so a client that
        # resumes after a crash waits for its job instead of uploading the file again. An open
        # multipart upload means the object is not there yet (its key is this upload's own).
        view["completed"] = parts is None and object_exists(self.s3, self.bucket, upload.key)
        return view

    async def part_urls(self, owner: str, upload_id: str, body: Any) -> dict[str, Any]:
        upload = await self._owned(owner, upload_id)
        multipart_id = self._multipart(upload, "sign")
        self._pending(upload, "uploaded to")
        plan = upload_plan(upload)
        numbers = parse_part_numbers(body, plan, self.settings.part_url_batch)
        expires_at = self._expiry()
        await self._still_pending(upload, owner, "uploaded to", expires_at)
        return {
            "id": upload.id,
            "expiresAt": _iso(expires_at),
            "partUrls": presign_parts(
                self.s3, self.bucket, upload.key, multipart_id, plan, numbers,
                self.settings.url_expiry_s,
            ),
        }  # fmt: skip

    async def _gone(self, upload: Upload) -> Conflict:
        """S3 no longer knows the multipart upload: either it was completed, or it was
        aborted (by us, or by the lifecycle rule), in which case the row says so from now on."""
        if object_exists(self.s3, self.bucket, upload.key):
            return Conflict("upload is already completed")
        await self.store.mark_aborted(upload.id)
        return Conflict("multipart upload no longer exists (aborted or expired)")

    def _key_taken(self, upload: Upload, multipart_id: str, code: str) -> Conflict:
        """S3 refused to complete over an object under the key (``If-None-Match: *``). If S3
        no longer knows the multipart upload, that object is this upload, completed by a
        concurrent request or by an SDK retry whose first try went through: the same answer
        as any repeated complete. Otherwise the key holds bytes this upload did not send (or,
        ``ConditionalRequestConflict``, another write to it was under way); the multipart
        upload is left open (the lifecycle rule aborts it)."""
        if list_uploaded_parts(self.s3, self.bucket, upload.key, multipart_id) is None:
            return Conflict("upload is already completed")
        if code == "ConditionalRequestConflict":
            return Conflict("another write to this upload's key was under way; complete again")
        return Conflict(
            "an object already exists under this upload's key; S3 refused to replace it, so"
            " this upload cannot be completed"
        )

    async def complete(self, owner: str, upload_id: str, body: Any) -> dict[str, Any]:
        upload = await self._owned(owner, upload_id)
        multipart_id = self._multipart(upload, "complete")
        if upload.state in HOLDING_STATES:  # S3 has its object (its flow may have ended)
            raise Conflict("upload is already completed")
        self._pending(upload, "completed")
        plan = upload_plan(upload)
        parts = parse_completed_parts(body, plan)
        # Check what S3 holds against the plan before assembling anything: an object of the
        # wrong size is refused here rather than after the fact by the enqueue path.
        held = list_uploaded_parts(self.s3, self.bucket, upload.key, multipart_id)
        if held is None:
            raise await self._gone(upload)
        sizes = {part["partNumber"]: part["size"] for part in held}
        missing = [number for number, _ in parts if number not in sizes]
        if missing:
            raise InvalidRequest(f"parts not uploaded yet: {_ranges(missing)}", field="parts")
        for number, _ in parts:
            if sizes[number] != plan.part_bytes(number):
                raise InvalidRequest(
                    f"part {number} has {sizes[number]} bytes, expected {plan.part_bytes(number)}",
                    field="parts",
                )
        # From here on the reconciler leaves the upload alone for a URL lifetime plus its
        # grace period; if it aborted the upload in between, nothing is assembled.
        await self._still_pending(upload, owner, "completed", self._expiry())
        try:
            # Never over an existing object: the key is this upload's own, so an object there
            # is this upload completed already (a concurrent or retried request) or bytes the
            # upload did not send; its jobs and outputs must describe what the key holds.
            result = self.s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=upload.key,
                UploadId=multipart_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": number, "ETag": etag} for number, etag in parts]
                },
                IfNoneMatch="*",
            )
        except Exception as exc:
            code = aws_error_code(exc)
            if code == "NoSuchUpload":
                raise await self._gone(upload) from exc
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise self._key_taken(upload, multipart_id, code) from exc
            if code in ("InvalidPart", "InvalidPartOrder", "EntityTooSmall", "MalformedXML"):
                raise InvalidRequest(
                    f"S3 refused to complete the upload ({code}): check each part's etag",
                    field="parts",
                ) from exc
            raise
        view = upload_view(upload)
        view["etag"] = result.get("ETag")
        view["completed"] = True
        return view

    async def abort(self, owner: str, upload_id: str) -> dict[str, Any]:
        upload = await self._owned(owner, upload_id)
        if upload.state == "aborted":
            return upload_view(upload)  # idempotent
        if upload.state in HOLDING_STATES:  # S3 has its object (its flow may have ended)
            raise Conflict("upload is already completed; it can no longer be aborted")
        self._pending(upload, "aborted")
        # A single upload may already be in S3 (the event is on its way); a multipart upload
        # S3 no longer knows may have been completed. Either way it is too late to abort.
        check_object = not upload.multipart_upload_id
        if upload.multipart_upload_id:
            try:
                self.s3.abort_multipart_upload(
                    Bucket=self.bucket, Key=upload.key, UploadId=upload.multipart_upload_id
                )
            except Exception as exc:
                if aws_error_code(exc) != "NoSuchUpload":
                    raise
                check_object = True
        if check_object and object_exists(self.s3, self.bucket, upload.key):
            raise Conflict("upload is already completed; it can no longer be aborted")
        aborted = await self.store.mark_aborted(upload.id)
        if aborted is None:  # the S3 event moved it on meanwhile
            current = await self._owned(owner, upload_id)
            raise Conflict(f"upload is {current.state}; it can no longer be aborted")
        return upload_view(aborted)
