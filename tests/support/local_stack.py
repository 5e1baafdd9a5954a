"""The local stack for end-to-end tests (one per test session, with its own schema, queue
prefix and work directory), and a small HTTP client of its API."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3

from offload_local import aws_resources
from offload_local.stack import LocalStack, StackInfo, StackOptions
from tests.support import servers

# Per-user upload quotas (offload.quotas) off for a standard user: what the e2e and system
# stacks give their demo user, who sends every test's uploads.
NO_QUOTAS = {
    f"OFFLOAD_QUOTA_STANDARD_{limit}": "0"
    for limit in ("OPEN_UPLOADS", "BYTES_IN_FLIGHT", "UPLOADS_PER_HOUR")
}
PLUS_OPEN_UPLOADS = 1


def start_options(workdir: Path, **overrides: Any) -> StackOptions:
    options = StackOptions(
        workers=2,
        port=0,
        redis_url=servers.redis_url(),
        database_url=servers.database_url(),
        schema=servers.unique_name("e2e"),
        queue_prefix="{" + servers.unique_name("e2e") + "}",
        workdir=workdir,
        demo_password="Aa1!e2e-" + servers.unique_name("pw"),
        queue_metrics_every_s=5,
        reconciler_every_s=30,
        worker_grace_s=10,
        events_visibility_timeout_s=2,
        env={
            # as StackOptions' own default: multipart from 8 MiB, 5 MiB parts (several parts
            # for a file of ~20 MiB)
            "OFFLOAD_SINGLE_UPLOAD_MAX_BYTES": str(8 * 1024 * 1024),
            "OFFLOAD_PART_SIZE_MIB": "5",
            "OFFLOAD_BACKOFF_MS": "200",
            "OFFLOAD_DRAIN_DELAY_S": "1",
            # Every test of the session is the demo user (standard): no quota refuses them.
            # A plus user gets one open upload, so that a test sees a plus user's quota, and
            # its 429, end to end (test_local_stack.py).
            **NO_QUOTAS,
            "OFFLOAD_QUOTA_PLUS_OPEN_UPLOADS": str(PLUS_OPEN_UPLOADS),
        },
    )
    for name, value in overrides.items():
        setattr(options, name, value)
    return options


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: Any


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    pool: urllib3.PoolManager | None = None,
) -> HttpAnswer:
    """One request; JSON in and out when the body is not bytes. 4xx/5xx are answers too.
    With ``pool``, over its kept-alive connections (as a browser sends its requests)."""
    data: bytes | None
    all_headers = dict(headers or {})
    if body is None or isinstance(body, bytes):
        data = body
        if body is not None:  # urllib would say x-www-form-urlencoded
            all_headers.setdefault("Content-Type", "application/octet-stream")
    else:
        data = json.dumps(body).encode()
        all_headers.setdefault("Content-Type", "application/json")
    if pool is not None:
        answer = pool.request(
            method, url, body=data, headers=all_headers, retries=False, redirect=False
        )
        status, raw, answer_headers = answer.status, answer.data, answer.headers
    else:
        request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                status, raw, answer_headers = answer.status, answer.read(), answer.headers
        except urllib.error.HTTPError as error:
            status, raw, answer_headers = error.code, error.read(), error.headers
    content_type = answer_headers.get("Content-Type", "")
    parsed: Any = json.loads(raw) if raw and "json" in content_type else raw
    return HttpAnswer(status, {k.lower(): v for k, v in answer_headers.items()}, parsed)


class ApiClient:
    """The stack's API as a signed-in user (over ``pool``'s connections when given)."""

    def __init__(
        self,
        info: StackInfo,
        username: str | None = None,
        password: str | None = None,
        pool: urllib3.PoolManager | None = None,
    ):
        self.info = info
        self.pool = pool
        user_pool = aws_resources.UserPool(info.user_pool_id, info.client_id)
        self.token = aws_resources.id_token(
            info.moto_endpoint, user_pool, username or info.username, password or info.password
        )

    def call(self, method: str, path: str, body: Any = None) -> HttpAnswer:
        return http(
            method, self.info.api_url + path, body, {"Authorization": self.token}, self.pool
        )


def presigned_post(
    post: dict[str, Any],
    filename: str,
    data: bytes,
    content_type: str,
    pool: urllib3.PoolManager | None = None,
) -> HttpAnswer:
    """The browser's side of a presigned POST: every policy field, then the file (last, as S3
    requires); raises unless S3 accepted it."""
    boundary = "offload-boundary-" + uuid.uuid4().hex
    form = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in post["fields"].items()
    )
    form += (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"'
            f"\r\nContent-Type: {content_type}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    answer = http(
        "POST",
        post["url"],
        form,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
        pool,
    )
    if answer.status not in (200, 201, 204):
        raise AssertionError(f"S3 refused the presigned POST: {answer.status} {answer.body!r}")
    return answer


def wait_until(predicate: Callable[[], Any], timeout_s: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout_s}s: {what}")
        time.sleep(0.2)


__all__ = ["ApiClient", "LocalStack", "http", "presigned_post", "start_options", "wait_until"]
