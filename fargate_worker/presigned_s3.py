"""S3 for a sandbox child, which holds no AWS credentials: each request goes to a URL the
worker presigned for it (``s3grants.py`` decides what may be signed).

``PresignedS3`` offers the two calls processors make on ``ctx.s3``, ``get_object`` and
``put_object``, with the parameters and response fields of boto3's (so ``s3stream`` reads from
either). The requests go through botocore's own HTTP session (the same TLS verification,
proxies and timeouts as boto3's clients) and S3 errors become botocore ``ClientError``s with
S3's error code, which ``s3stream.permanent_error`` and the retry rules already know. Like
boto3's standard retry mode, a request is tried up to ``MAX_ATTEMPTS`` times on connection
errors, 5xx answers and throttling.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import Any
from xml.etree import ElementTree

from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.httpsession import URLLib3Session
from botocore.response import StreamingBody
from botocore.utils import get_environ_proxies

# Request parameters sent as headers; the worker signs them, so they go exactly as asked.
HEADERS = {"IfMatch": "If-Match", "ContentType": "Content-Type"}
_OPERATIONS = {"get_object": ("GET", "GetObject"), "put_object": ("PUT", "PutObject")}
MAX_ATTEMPTS = 5
_RETRY_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling"}
_ERROR_BODY_LIMIT = 64 * 1024
TIMEOUT_S = 60  # connect and read, as botocore's default

Presign = Callable[[str, dict[str, Any]], str]
_SESSION: URLLib3Session | None = None


class PresignedS3:
    """``get_object`` and ``put_object`` of a job's objects, through ``presign(operation,
    params) -> url`` (in a child: a request to the worker over the pipe)."""

    def __init__(self, presign: Presign):
        self._presign = presign

    def get_object(self, **params: Any) -> dict[str, Any]:
        response = self._send("get_object", params, None)
        headers = response.headers
        if "content-length" not in headers:
            response.raw.close()
            raise _error(
                response.status_code, "IncompleteResponse", "no Content-Length", "GetObject"
            )
        length = int(headers["content-length"])
        return {
            "Body": _Body(response.raw, length),
            "ContentLength": length,
            "ContentType": headers.get("content-type"),
            "ETag": headers.get("etag"),
            "VersionId": headers.get("x-amz-version-id"),
        }

    def put_object(self, *, Body: Any = b"", **params: Any) -> dict[str, Any]:  # noqa: N803
        response = self._send("put_object", params, Body)
        response.content  # noqa: B018  # read the (empty) body: the connection goes back to the pool
        return {
            "ETag": response.headers.get("etag"),
            "VersionId": response.headers.get("x-amz-version-id"),
        }

    def _send(self, operation: str, params: dict[str, Any], body: Any) -> AWSResponse:
        method, name = _OPERATIONS[operation]
        url = self._presign(operation, params)
        headers = {
            HEADERS[param]: str(value) for param, value in params.items() if param in HEADERS
        }
        start = body.tell() if hasattr(body, "seek") else None
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if start is not None:
                body.seek(start)
            request = AWSRequest(method, url, data=body, headers=headers, stream_output=True)
            try:
                response = _session(url).send(request.prepare())
            except (HTTPClientError, BotoConnectionError) as exc:
                if attempt == MAX_ATTEMPTS:
                    raise S3TransferError(f"{type(exc).__name__} on S3 {name}") from None
                _back_off(attempt)
                continue
            if response.status_code < 300:
                return response
            error = _client_error(response, name)
            code = error.response["Error"]["Code"]
            if attempt == MAX_ATTEMPTS or not (response.status_code >= 500 or code in _RETRY_CODES):
                raise error
            _back_off(attempt)
        raise AssertionError("unreachable")  # the loop returns or raises


class S3TransferError(Exception):
    """S3 did not answer or the connection broke: retried like any error. The message names
    the error's type only: botocore's would quote the presigned URL (its signature, the
    worker's session token), and job errors reach PostgreSQL, the logs and the job's user."""


class _Body(StreamingBody):
    """botocore's body, whose read errors (a timeout, a broken connection) quote no URL."""

    def read(self, amt: int | None = None) -> bytes:
        try:
            return bytes(super().read(amt))
        except (HTTPClientError, BotoConnectionError) as exc:
            raise S3TransferError(f"{type(exc).__name__} reading an S3 object") from None

    def readinto(self, b: Any) -> int:
        try:
            return int(super().readinto(b))
        except (HTTPClientError, BotoConnectionError) as exc:
            raise S3TransferError(f"{type(exc).__name__} reading an S3 object") from None


def _session(url: str) -> URLLib3Session:
    """One HTTP session per child process: connections are reused from job to job."""
    global _SESSION
    if _SESSION is None:
        # The CA bundle and proxies boto3 would use (AWS_CA_BUNDLE, HTTPS_PROXY, NO_PROXY).
        verify: str | bool = os.environ.get("AWS_CA_BUNDLE") or True
        _SESSION = URLLib3Session(
            verify=verify, timeout=TIMEOUT_S, proxies=get_environ_proxies(url)
        )
    return _SESSION


def _back_off(attempt: int) -> None:
    """Full jitter, as boto3's standard mode: up to 2^attempt x 0.5 s, at most 20 s."""
    time.sleep(random.uniform(0, min(20.0, 0.5 * 2**attempt)))


def _client_error(response: AWSResponse, operation: str) -> ClientError:
    """S3's error answer as boto3 would raise it: its ``Code`` and ``Message``, else the
    status code as the code (answers without a body, such as a 304)."""
    raw = response.raw.read(_ERROR_BODY_LIMIT)
    response.raw.close()
    code, message = str(response.status_code), ""
    try:
        root = ElementTree.fromstring(raw) if raw else None
    except ElementTree.ParseError:
        root = None
    if root is not None:
        code = root.findtext("Code") or code
        message = root.findtext("Message") or ""
    return _error(response.status_code, code, message, operation)


def _error(status: int, code: str, message: str, operation: str) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        operation,
    )
