"""API Gateway REST (v1) proxy events, built the way API Gateway builds them for the API Lambda
behind a Cognito user-pool authorizer, and the Lambda's answer turned back into HTTP."""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The API's resources, as declared in API Gateway (stacks/api.py); path parameters in braces.
RESOURCES = (
    "/uploads",
    "/uploads/{id}",
    "/uploads/{id}/parts",
    "/uploads/{id}/complete",
    "/jobs",
    "/jobs/{id}",
    "/jobs/{id}/retry",
)
_PATTERNS = [
    (
        resource,
        re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(resource)) + "$"),
    )
    for resource in RESOURCES
]


def match_resource(path: str) -> tuple[str | None, dict[str, str] | None]:
    """The declared resource ``path`` falls under and its path parameters; ``(None, None)``
    for a path API Gateway does not route."""
    for resource, pattern in _PATTERNS:
        if match := pattern.match(path):
            return resource, (match.groupdict() or None)
    return None, None


def proxy_event(
    method: str,
    path: str,
    *,
    headers: Mapping[str, str],
    query: Mapping[str, list[str]] | None = None,
    body: str | None = None,
    is_base64: bool = False,
    claims: Mapping[str, Any] | None = None,
    source_ip: str = "127.0.0.1",
    stage: str = "local",
    domain: str = "localhost",
    request_id: str | None = None,
) -> dict[str, Any]:
    """The event; ``claims`` go to ``requestContext.authorizer`` as given (the Cognito
    authorizer passes strings only: see :func:`authorizer_claims`)."""
    resource, path_parameters = match_resource(path)
    resource = resource or path
    request_id = request_id or str(uuid.uuid4())
    now = time.time()
    context: dict[str, Any] = {
        "resourceId": "local",
        "resourcePath": resource,
        "httpMethod": method,
        "extendedRequestId": request_id[:16] + "=",
        "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
        "path": f"/{stage}{path}",
        "accountId": "123456789012",
        "protocol": "HTTP/1.1",
        "stage": stage,
        "domainPrefix": domain.split(".", 1)[0],
        "requestTimeEpoch": int(now * 1000),
        "requestId": request_id,
        "identity": {"sourceIp": source_ip, "userAgent": headers.get("User-Agent", "")},
        "domainName": domain,
        "apiId": "local",
    }
    if claims is not None:
        context["authorizer"] = {"claims": dict(claims)}
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": dict(headers),
        "multiValueHeaders": {name: [value] for name, value in headers.items()},
        "queryStringParameters": {k: v[-1] for k, v in (query or {}).items()} or None,
        "multiValueQueryStringParameters": {k: list(v) for k, v in (query or {}).items()} or None,
        "pathParameters": path_parameters,
        "stageVariables": None,
        "requestContext": context,
        "body": body,
        "isBase64Encoded": is_base64,
    }


def authorizer_claims(token_claims: Mapping[str, Any]) -> dict[str, str]:
    """A verified token's claims as the Cognito authorizer hands them on: every value a
    string (lists joined with commas)."""
    return {
        name: ",".join(map(str, value)) if isinstance(value, list) else str(value)
        for name, value in token_claims.items()
    }


@dataclass
class HttpAnswer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def http_answer(result: Mapping[str, Any]) -> HttpAnswer:
    """A Lambda proxy integration's result as the HTTP answer API Gateway sends."""
    headers: list[tuple[str, str]] = []
    single = dict(result.get("headers") or {})
    for name, values in (result.get("multiValueHeaders") or {}).items():
        single.pop(name, None)
        headers.extend((name, str(value)) for value in values)
    headers.extend((name, str(value)) for name, value in single.items())
    text = result.get("body") or ""
    body = base64.b64decode(text) if result.get("isBase64Encoded") else text.encode()
    return HttpAnswer(int(result.get("statusCode", 200)), headers, body)
