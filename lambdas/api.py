"""The upload and status API: API Gateway (REST, Cognito authorizer) -> this Lambda.

Routes (docs/api.md has the bodies and answers):

    POST   /uploads                 new upload: presigned POST, or multipart + first part URLs
    GET    /uploads                 the caller's uploads with their pipelines, newest first
    GET    /uploads/{id}            state and pipeline; for multipart, the parts S3 has (resume)
    POST   /uploads/{id}/parts      more part URLs
    POST   /uploads/{id}/complete   complete a multipart upload
    DELETE /uploads/{id}            abort
    GET    /jobs                    the caller's jobs (or one upload's), newest first, cursor
    POST   /jobs                    ask for a job by name (offload.requested_jobs): 202
    GET    /jobs/{id}               one job
    POST   /jobs/{id}/retry         put a failed job back in the queue

The caller is the Cognito ``sub`` the authorizer put in the request context; without it the
answer is 401. Everything is scoped by it: another user's upload or job is answered exactly as
a missing one (404), for every route. The caller's user pool groups (``cognito:groups``) give
their quota tier (``offload.caller``); a new upload over its quota is 429 with ``Retry-After``
(``offload.quotas``). Errors are JSON ``{"message": ...}`` (plus ``field`` when one request
field is at fault).

The handler is thin: every route reads caller -> service -> answer, the rules living in
``offload.uploads.UploadService`` and ``offload.jobs_service.JobService``.
Cold start: this module imports only Powertools and light modules; the container runtime
(psycopg, bullmq), boto3 and the job service are imported by the first request that needs them.
"""

from __future__ import annotations

import json
import os
import warnings
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
from offload.caller import Caller
from offload.quotas import QuotaExceeded
from offload.settings import Settings
from offload.uploads import InvalidRequest, RequestError

if TYPE_CHECKING:
    from types import ModuleType

    from offload.jobs_service import JobService

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "offload-api")

# What the module needs before any request: the metrics namespace and the CORS origins. Plain
# environment parsing (the container's settings, with their secrets, come with the first
# request that needs them: runtime.settings()); a bad variable fails the cold start.
_STARTUP = Settings.from_env()
logger = Logger(service=SERVICE)
metrics = Metrics(service=SERVICE, namespace=_STARTUP.metrics_namespace)


def _cors_config(origins: tuple[str, ...]) -> CORSConfig | None:
    """``OFFLOAD_CORS_ORIGIN``: the allowed origins; none = no CORS headers."""
    if not origins:
        return None
    return CORSConfig(
        allow_origin=origins[0],
        extra_origins=list(origins[1:]) or None,
        max_age=600,
        expose_headers=["Retry-After"],  # a page's fetch may read when to try again (429)
    )


app = APIGatewayRestResolver(cors=_cors_config(_STARTUP.cors_origins))


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


def _caller() -> Caller:
    """The caller (Cognito ``sub`` and groups) from the authorizer's claims, or 401."""
    context = app.current_event.raw_event.get("requestContext") or {}
    caller = Caller.from_claims((context.get("authorizer") or {}).get("claims"))
    if caller is None:
        raise Unauthorized("missing or invalid caller identity")
    logger.append_keys(user=caller.sub, tier=caller.tier.value)
    return caller


def _body() -> Any:
    try:
        raw = app.current_event.decoded_body
    except ValueError as exc:  # invalid base64
        raise InvalidRequest("request body is not valid JSON") from exc
    if raw is None or not raw.strip():
        raise InvalidRequest("request body is required")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the stack
        raise InvalidRequest("request body is not valid JSON") from exc


def _upload_service(*, with_pipelines: bool = False) -> uploads.UploadService:
    """The upload routes' service; the status routes' (``with_pipelines``) reads each upload's
    jobs too (the job service, imported then)."""
    runtime = _runtime()
    from offload.aws import s3_client

    settings = runtime.settings()
    store = runtime.run(runtime.uploads())
    pipelines = _job_service() if with_pipelines else None
    return uploads.UploadService(settings, s3_client(settings.s3_endpoint_url), store, pipelines)


def _job_service() -> JobService:
    runtime = _runtime()
    from offload.aws import s3_client
    from offload.jobs_service import JobService

    settings = runtime.settings()

    async def queue(name: str) -> Any:
        return (await runtime.producer()).queue_named(name)

    return JobService(
        settings,
        runtime.run(runtime.job_queries()),
        runtime.run(runtime.statuses()),
        s3=lambda: s3_client(settings.s3_endpoint_url),
        queue=queue,
        pool=runtime.run(runtime.pool()),
    )


def _count(name: str) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)


# --- uploads ----------------------------------------------------------------------------------


@app.post("/uploads")
def create_upload() -> Response:
    caller = _caller()
    body = _body()
    service = _upload_service()
    view = _runtime().run(service.create(caller.sub, body, caller.tier))
    logger.append_keys(upload_id=view["id"])
    logger.info(
        "upload created",
        extra={"type": view["type"], "size": view["size"], "content_type": view["contentType"]},
    )
    _count("UploadsCreated")
    metrics.add_metric(name="UploadBytesAnnounced", unit=MetricUnit.Bytes, value=view["size"])
    return _json(201, view)


@app.get("/uploads")
def list_uploads() -> Response:
    owner = _caller().sub
    event = app.current_event
    limit = event.get_query_string_value("limit")
    cursor = event.get_query_string_value("cursor")
    state = event.get_query_string_value("state")
    service = _upload_service(with_pipelines=True)
    return _json(200, _runtime().run(service.page(owner, limit, cursor, state)))


@app.get("/uploads/<upload_id>")
def get_upload(upload_id: str) -> Response:
    owner = _caller().sub
    service = _upload_service(with_pipelines=True)
    return _json(200, _runtime().run(service.get(owner, upload_id)))


@app.post("/uploads/<upload_id>/parts")
def part_urls(upload_id: str) -> Response:
    owner = _caller().sub
    body = _body()
    service = _upload_service()
    answer = _runtime().run(service.part_urls(owner, upload_id, body))
    logger.info("part urls signed", extra={"count": len(answer["partUrls"])})
    return _json(200, answer)


@app.post("/uploads/<upload_id>/complete")
def complete_upload(upload_id: str) -> Response:
    owner = _caller().sub
    body = _body()
    service = _upload_service()
    view = _runtime().run(service.complete(owner, upload_id, body))
    logger.info("multipart upload completed", extra={"upload_id": upload_id})
    _count("MultipartUploadsCompleted")
    return _json(200, view)


@app.delete("/uploads/<upload_id>")
def abort_upload(upload_id: str) -> Response:
    owner = _caller().sub
    service = _upload_service()
    view = _runtime().run(service.abort(owner, upload_id))
    logger.info("upload aborted", extra={"upload_id": upload_id})
    _count("UploadsAborted")
    return _json(200, view)


# --- jobs -------------------------------------------------------------------------------------


@app.get("/jobs")
def list_jobs() -> Response:
    owner = _caller().sub
    event = app.current_event
    limit = event.get_query_string_value("limit")
    cursor = event.get_query_string_value("cursor")
    upload_id = event.get_query_string_value("uploadId")
    name = event.get_query_string_value("name")
    service = _job_service()
    return _json(200, _runtime().run(service.page(owner, limit, cursor, upload_id, name)))


@app.post("/jobs")
def request_job() -> Response:
    caller = _caller()
    body = _body()
    service = _job_service()
    view = _runtime().run(service.request(caller.sub, caller.tier.value, body))
    logger.info("job requested", extra={"job_id": view["id"], "job_name": view["name"]})
    _count("JobsRequested")
    return _json(202, view)


@app.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    owner = _caller().sub
    service = _job_service()
    return _json(200, _runtime().run(service.get(owner, job_id)))


@app.post("/jobs/<job_id>/retry")
def retry_job(job_id: str) -> Response:
    owner = _caller().sub
    service = _job_service()
    view = _runtime().run(service.retry(owner, job_id))
    logger.info("job retried", extra={"job_id": job_id})
    _count("JobsRetried")
    return _json(200, view)


# --- errors -----------------------------------------------------------------------------------


@app.exception_handler(RequestError)
def _request_error(exc: RequestError) -> Response:
    logger.info("request refused", extra={"status": exc.status, "reason": exc.message})
    _count("ClientErrors")
    return _error(exc.status, exc.message, exc.field)


@app.exception_handler(QuotaExceeded)
def _over_quota(exc: QuotaExceeded) -> Response:
    """429 with ``Retry-After`` (seconds) and which limit, in the body as well (a page may not
    read response headers across origins without CORS exposing them)."""
    logger.info("over quota", extra={"quota": exc.quota, "retry_after_s": exc.retry_after_s})
    _count("QuotaRefusals")
    response = _json(exc.status, exc.body())
    response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


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
