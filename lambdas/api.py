"""The upload and status API: API Gateway (REST, Cognito authorizer) -> this Lambda.

Routes (docs/api.md has the bodies and answers):

    POST   /uploads                 new upload: presigned POST, or multipart + first part URLs
    GET    /uploads/{id}            state; for multipart, the parts S3 already has (resume)
    POST   /uploads/{id}/parts      more part URLs
    POST   /uploads/{id}/complete   complete a multipart upload
    DELETE /uploads/{id}            abort
    GET    /jobs                    the caller's jobs, newest first, cursor pagination
    GET    /jobs/{id}               one job
    POST   /jobs/{id}/retry         put a failed job back in the queue

The caller is the Cognito ``sub`` the authorizer put in the request context; without it the
answer is 401. Everything is scoped by it: another user's upload or job is answered exactly as
a missing one (404), for every route. Errors are JSON ``{"message": ...}`` (plus ``field``
when one request field is at fault).

The handler is thin: the logic lives in ``offload.uploads`` and ``offload.db.job_queries``.
Cold start: this module imports only Powertools and light modules; the container runtime
(psycopg, bullmq) and boto3 are imported by the first request that needs them.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import (
    APIGatewayRestResolver,
    CORSConfig,
    Response,
    content_types,
)
from aws_lambda_powertools.event_handler.exceptions import NotFoundError as RouteNotFound
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit

from lambdas.tracing import current_tracer, traced
from offload import uploads
from offload.uploads import Conflict, InvalidRequest, NotFound, RequestError

if TYPE_CHECKING:
    from types import ModuleType

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "offload-api")
_SUB = re.compile(r"^[A-Za-z0-9_-]{1,128}$")  # a Cognito sub is a UUID; it names key segments
_JOB_ID = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
_LIMIT = re.compile(r"^[0-9]{1,4}$")

logger = Logger(service=SERVICE)
metrics = Metrics(
    service=SERVICE,
    namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE")
    or os.environ.get("OFFLOAD_METRICS_NAMESPACE")
    or "Offload",
)


def _cors_config() -> CORSConfig | None:
    """``OFFLOAD_CORS_ORIGIN``: comma-separated allowed origins; unset = no CORS headers."""
    origins = [o.strip() for o in os.environ.get("OFFLOAD_CORS_ORIGIN", "").split(",") if o.strip()]
    if not origins:
        return None
    return CORSConfig(allow_origin=origins[0], extra_origins=origins[1:] or None, max_age=600)


app = APIGatewayRestResolver(cors=_cors_config())


class Unauthorized(RequestError):
    status = 401


# --- plumbing ---------------------------------------------------------------------------------


def _runtime() -> ModuleType:
    """The container runtime (settings, loop, pool, producer), imported on first use."""
    from lambdas import runtime

    return runtime


def _json(status: int, body: Any) -> Response:
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=json.dumps(body, separators=(",", ":"), default=str),
        headers={"Cache-Control": "no-store"},  # answers carry presigned URLs
    )


def _error(status: int, message: str, field: str | None = None) -> Response:
    body: dict[str, Any] = {"message": message}
    if field:
        body["field"] = field
    return _json(status, body)


def _caller() -> str:
    """The Cognito ``sub`` from the authorizer context, or 401."""
    context = app.current_event.raw_event.get("requestContext") or {}
    claims = (context.get("authorizer") or {}).get("claims") or {}
    sub = claims.get("sub") if isinstance(claims, dict) else None
    if not isinstance(sub, str) or not _SUB.match(sub):
        raise Unauthorized("missing or invalid caller identity")
    logger.append_keys(user=sub)
    return sub


def _body() -> Any:
    try:
        raw = app.current_event.decoded_body
    except ValueError as exc:  # invalid base64
        raise InvalidRequest("request body is not valid JSON") from exc
    if raw is None or not raw.strip():
        raise InvalidRequest("request body is required")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest("request body is not valid JSON") from exc


def _upload_service() -> uploads.UploadService:
    runtime = _runtime()
    from offload.aws import s3_client

    settings = runtime.settings()
    store = runtime.run(runtime.uploads())
    return uploads.UploadService(settings, s3_client(settings.s3_endpoint_url), store)


async def _job_queries() -> Any:
    from offload.db.job_queries import JobQueries

    return JobQueries(await _runtime().pool())


def _count(name: str) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)


# --- uploads ----------------------------------------------------------------------------------


@app.post("/uploads")
def create_upload() -> Response:
    owner = _caller()
    body = _body()
    service = _upload_service()
    view = _runtime().run(service.create(owner, body))
    logger.append_keys(upload_id=view["id"])
    logger.info(
        "upload created",
        extra={"type": view["type"], "size": view["size"], "content_type": view["contentType"]},
    )
    _count("UploadsCreated")
    metrics.add_metric(name="UploadBytesAnnounced", unit=MetricUnit.Bytes, value=view["size"])
    return _json(201, view)


@app.get("/uploads/<upload_id>")
def get_upload(upload_id: str) -> Response:
    owner = _caller()
    service = _upload_service()
    return _json(200, _runtime().run(service.get(owner, upload_id)))


@app.post("/uploads/<upload_id>/parts")
def part_urls(upload_id: str) -> Response:
    owner = _caller()
    body = _body()
    service = _upload_service()
    answer = _runtime().run(service.part_urls(owner, upload_id, body))
    logger.info("part urls signed", extra={"count": len(answer["partUrls"])})
    return _json(200, answer)


@app.post("/uploads/<upload_id>/complete")
def complete_upload(upload_id: str) -> Response:
    owner = _caller()
    body = _body()
    service = _upload_service()
    view = _runtime().run(service.complete(owner, upload_id, body))
    logger.info("multipart upload completed", extra={"upload_id": upload_id})
    _count("MultipartUploadsCompleted")
    return _json(200, view)


@app.delete("/uploads/<upload_id>")
def abort_upload(upload_id: str) -> Response:
    owner = _caller()
    service = _upload_service()
    view = _runtime().run(service.abort(owner, upload_id))
    logger.info("upload aborted", extra={"upload_id": upload_id})
    _count("UploadsAborted")
    return _json(200, view)


# --- jobs -------------------------------------------------------------------------------------


@app.get("/jobs")
def list_jobs() -> Response:
    owner = _caller()
    from offload.db import job_queries

    event = app.current_event
    raw_limit = event.get_query_string_value("limit")
    limit = job_queries.DEFAULT_LIMIT
    if raw_limit is not None:
        if not _LIMIT.match(raw_limit) or not 1 <= int(raw_limit) <= job_queries.MAX_LIMIT:
            raise InvalidRequest(
                f"limit must be an integer within 1..{job_queries.MAX_LIMIT}", field="limit"
            )
        limit = int(raw_limit)
    after = None
    if (raw_cursor := event.get_query_string_value("cursor")) is not None:
        try:
            after = job_queries.decode_cursor(raw_cursor)
        except job_queries.InvalidCursor as exc:
            raise InvalidRequest(str(exc), field="cursor") from exc

    async def page() -> Any:
        return await (await _job_queries()).list_for_owner(owner, limit, after)

    rows, next_cursor = _runtime().run(page())
    return _json(
        200,
        {
            "jobs": [_job_answer(owner, row) for row in rows],
            "nextCursor": job_queries.encode_cursor(next_cursor) if next_cursor else None,
        },
    )


def _job_answer(owner: str, row: Any) -> dict[str, Any]:
    """A job as the API shows it, with ``links``: presigned GETs of a completed job's outputs.
    A superseded job (for an older version of its upload's object) gets none: its outputs'
    keys are the upload's, and hold the newest version's outputs."""
    from offload.aws import s3_client
    from offload.db.job_queries import job_view

    view = job_view(row)
    view["links"] = []
    view["outputsArchived"] = False
    if row.state == "completed" and row.upload_id and not row.superseded:
        settings = _runtime().settings()
        now = datetime.now(UTC)
        if uploads.outputs_archived(row.finished_at, settings.processed_archive_after_days, now):
            view["outputsArchived"] = True  # a link would answer InvalidObjectState
            return view
        view["links"] = uploads.result_links(
            s3_client(settings.s3_endpoint_url),
            settings.upload_bucket,
            owner,
            row.upload_id,
            row.result,
            settings.url_expiry_s,
        )
    return view


async def _owned_job(owner: str, job_id: str) -> Any:
    row = None
    if _JOB_ID.match(job_id):
        row = await (await _job_queries()).get_for_owner(job_id, owner)
    if row is None:
        raise NotFound("job not found")
    return row


@app.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    owner = _caller()
    return _json(200, _job_answer(owner, _runtime().run(_owned_job(owner, job_id))))


_GONE = "job is no longer in the queue (past retention) and cannot be retried"


async def _retry(owner: str, job_id: str) -> Any:
    """Claim the row in PostgreSQL, then ask bullmq, then commit the claim (StatusStore.
    retry_claim says why in that order and what each failure leaves behind).

    Only the request whose claim wins touches the queue: a double click, or two clients, get
    one 200 and one 409, and the job runs once more, never twice. bullmq's own retry is atomic,
    but it cannot tell a second retry of the same failure from a retry of the next one: a
    second request that read the row before the first retry and reaches bullmq after the job
    ran and failed again (a cold container is slower than a job that fails at once) would run
    it a second time. The claim is guarded by the attempt the request saw, so it cannot.

    A 503 (PostgreSQL or Redis out of reach at any step) never leaves the row claimed: the claim
    rolls back unless it committed after bullmq accepted. Whether bullmq applied the retry is
    then unknown to us, and needs no repair: if it did, the job runs and the worker's ``active``
    (a later attempt) overwrites the ``failed`` row; if it did not, the row and the queue still
    agree that the job failed, and the client may retry."""
    runtime = _runtime()
    row = await _owned_job(owner, job_id)
    if row.state != "failed":
        raise Conflict(f"job is {row.state}; only a failed job can be retried")
    if row.superseded:
        # Run again, it would write the upload's outputs over the newest version's.
        raise Conflict("job is for an older version of the uploaded object; it cannot be retried")
    queue = (await runtime.producer()).queue  # before the claim: keep the row locked briefly
    statuses = await runtime.statuses()
    async with statuses.retry_claim(
        job_id, row.attempt, owner=owner, message="retry requested"
    ) as claimed:
        if not claimed:
            raise Conflict("job was retried meanwhile; only a failed job can be retried")
        job = await queue.getJob(job_id)
        if job is None:
            raise Conflict(_GONE)
        try:
            await job.retry("failed")
        except TypeError as exc:  # bullmq: not in the failed set, or no such job any more
            if await queue.getJob(job_id) is None:
                raise Conflict(_GONE) from exc
            raise Conflict("job is not failed in the queue; it may still be finishing") from exc
        # A fresh stall allowance: bullmq keeps the stall count across retries, so a job the
        # stall limit failed would fail again at its next single crash. (Milliseconds after the
        # move, long before a run could stall: that takes a whole lock duration.)
        await queue.client.hdel(queue.toKey(job_id), "stc")
    return await _owned_job(owner, job_id)


@app.post("/jobs/<job_id>/retry")
def retry_job(job_id: str) -> Response:
    owner = _caller()
    row = _runtime().run(_retry(owner, job_id))
    logger.info("job retried", extra={"job_id": job_id})
    _count("JobsRetried")
    return _json(200, _job_answer(owner, row))


# --- errors -----------------------------------------------------------------------------------


@app.exception_handler(RequestError)
def _request_error(exc: RequestError) -> Response:
    logger.info("request refused", extra={"status": exc.status, "reason": exc.message})
    _count("ClientErrors")
    return _error(exc.status, exc.message, exc.field)


@app.not_found
def _no_route(exc: RouteNotFound) -> Response:
    return _error(404, "no such route")


def _unavailable(exc: Exception) -> bool:
    """PostgreSQL or Redis out of reach: the client may retry (503), nothing is broken."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from offload.db.pool import RETRYABLE

    return isinstance(exc, (*RETRYABLE, RedisConnectionError, RedisTimeoutError))


@app.exception_handler(Exception)
def _unexpected(exc: Exception) -> Response:
    _count("ServerErrors")
    if _unavailable(exc):
        logger.warning("dependency unavailable", extra={"error": type(exc).__name__})
        return _error(503, "service temporarily unavailable, try again")
    logger.exception("unhandled error")
    return _error(500, "internal error")


# --- entry point ------------------------------------------------------------------------------


@metrics.log_metrics(capture_cold_start_metric=True)
def _resolve(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if (tracer := current_tracer()) is not None:
        tracer.put_annotation("route", f"{event.get('httpMethod')} {event.get('resource')}")
    response = app.resolve(event, context)
    logger.info(
        "request",
        extra={
            "method": event.get("httpMethod"),
            "route": event.get("resource"),
            "status": response.get("statusCode"),
        },
    )
    return response


@logger.inject_lambda_context(
    correlation_id_path=correlation_paths.API_GATEWAY_REST, log_event=False, clear_state=True
)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    with warnings.catch_warnings():
        # Read-only routes publish no metric; that is expected, not worth a warning per call.
        warnings.filterwarnings("ignore", message="No application metrics to publish")
        return _traced_resolve(event, context)


_traced_resolve = traced(_resolve)
