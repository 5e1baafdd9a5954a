"""API Gateway REST proxy events, as API Gateway hands them to the API Lambda behind a Cognito
user-pool authorizer, and a helper to call the handler in-process."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offload_local.apigw import proxy_event
from offload_local.containers import LambdaContext

REPO_ROOT = Path(__file__).resolve().parents[2]
__all__ = ["LambdaContext"]  # handler tests pass it to the API Lambda
DOMAIN = "abc123.execute-api.us-east-1.amazonaws.com"

_NOT_GIVEN: Any = object()


def event(
    method: str,
    path: str,
    *,
    sub: str | None = "user-a",
    body: Any = _NOT_GIVEN,
    raw_body: str | None = None,
    base64_body: bool = False,
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    claims: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """A REST API (v1) proxy event as API Gateway builds it (``offload_local.apigw``, which the
    local gateway uses too). ``body`` is JSON-encoded, ``raw_body`` sent as is; ``sub=None``
    leaves the authorizer claims out (as a misconfigured route would)."""
    if body is not _NOT_GIVEN:
        raw_body = json.dumps(body)
    if raw_body is not None and base64_body:
        raw_body = base64.b64encode(raw_body.encode()).decode()
    all_headers = {
        "Accept": "application/json",
        "Authorization": "eyJraWQiOiJ0ZXN0In0.eyJzdWIiOiJ0ZXN0In0.c2lnbmF0dXJl",
        "Content-Type": "application/json",
        "Host": DOMAIN,
        "User-Agent": "pytest",
        "X-Amzn-Trace-Id": "Root=1-5f84c7a9-0e5b1e2a3b4c5d6e7f809010",
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Port": "443",
        "X-Forwarded-Proto": "https",
        **(headers or {}),
    }
    all_claims: dict[str, Any] | None = None
    if sub is not None or claims is not None:
        all_claims = claims or {
            "sub": sub,
            "cognito:username": sub,
            "email": f"{sub}@example.com",
            "token_use": "id",
            "iss": "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_example",
            "aud": "exampleclientid",
            "auth_time": str(int(time.time())),
        }
    return proxy_event(
        method,
        path,
        headers=all_headers,
        query={name: [value] for name, value in query.items()} if query else None,
        body=raw_body,
        is_base64=base64_body,
        claims=all_claims,
        source_ip="203.0.113.7",
        stage="prod",
        domain=DOMAIN,
        request_id=request_id,
    )


@dataclass
class ApiResponse:
    status: int
    body: Any
    headers: dict[str, str]
    raw: dict[str, Any]

    @property
    def message(self) -> str:
        return self.body.get("message", "") if isinstance(self.body, dict) else ""


def call(method: str, path: str, **kwargs: Any) -> ApiResponse:
    """Build the event, run ``lambdas.api.handler`` in-process, decode the JSON answer."""
    from lambdas import api

    return decode(api.handler(event(method, path, **kwargs), LambdaContext("offload-api", 29.0)))


def decode(raw: dict[str, Any]) -> ApiResponse:
    """The handler's answer (a REST proxy integration result) with its JSON body decoded."""
    text = raw.get("body") or ""
    if raw.get("isBase64Encoded"):
        text = base64.b64decode(text).decode()
    body = json.loads(text) if text else None
    headers = {k.lower(): v for k, v in (raw.get("headers") or {}).items()}
    for name, values in (raw.get("multiValueHeaders") or {}).items():
        headers.setdefault(name.lower(), ",".join(values))
    return ApiResponse(raw["statusCode"], body, headers, raw)


def configure(monkeypatch: Any, **env: str | int) -> None:
    """Set Lambda environment variables for this test (before the container reads its
    settings, or in between: the cached settings are dropped)."""
    from lambdas import runtime

    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    runtime.settings.cache_clear()


async def run_jobs(settings: Any, jobs: list[tuple[str, Any, dict[str, Any]]]) -> list[str]:
    """Enqueue ``(name, JobRef, opts)`` through the Producer, run a real worker until every job
    is finished (``completed`` or ``failed``) in PostgreSQL and in the queue, then stop it.
    Returns the job ids."""
    from offload.queue import producer
    from tests.support.harness import running_worker, wait_for

    async with producer(settings) as made:
        ids = [await made.enqueue(name, ref, opts) for name, ref, opts in jobs]
        async with running_worker(settings):

            async def finished(job_id: str) -> bool:
                job = await made.queue.getJob(job_id)
                return job is not None and await job.getState() in ("completed", "failed")

            for job_id in ids:
                await wait_for(lambda job_id=job_id: finished(job_id), timeout_s=30)
    return ids
