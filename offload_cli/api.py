"""The upload and status API (docs/api.md) over urllib3, with errors a user can act on:
4xx -> :class:`ApiError` (the API's message and field), 401 after one token refresh ->
:class:`AuthError`, no answer or 5xx after retries -> :class:`UnavailableError`."""

from __future__ import annotations

import json
import random
import time
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import urllib3

from offload_cli.errors import ApiError, AuthError, UnavailableError

RETRY_STATUSES = {429, 500, 502, 503, 504}


class TokenSource(Protocol):
    describe: str

    def token(self) -> str: ...

    def refresh(self, rejected: str) -> bool: ...


def new_pool(maxsize: int = 16) -> urllib3.PoolManager:
    """One pool for the API and S3: ``maxsize`` connections per host, never blocking."""
    return urllib3.PoolManager(
        num_pools=8,
        maxsize=maxsize,
        retries=False,
        timeout=urllib3.Timeout(connect=10, read=120),
    )


def backoff_s(attempt: int, first_s: float = 0.5, cap_s: float = 10.0) -> float:
    """Exponential backoff with full jitter: attempt 1 waits up to ``first_s``, then doubles."""
    return random.uniform(0, min(cap_s, first_s * 2 ** (attempt - 1)))


class Api:
    def __init__(
        self,
        api_url: str,
        auth: TokenSource,
        pool: urllib3.PoolManager,
        tries: int = 4,
        timeout_s: float = 60.0,
    ):
        self.api_url = api_url.rstrip("/")
        self.auth = auth
        self.pool = pool
        self.tries = tries
        self.timeout_s = timeout_s

    def call(
        self, method: str, path: str, body: Any = None, tries: int | None = None
    ) -> dict[str, Any]:
        """One API call; the JSON object of a 2xx answer (every route answers one: a 2xx
        without one came from something else, e.g. a captive portal, and is an
        UnavailableError, not a crash further on). Retries 429/5xx and connection errors,
        ``tries`` times in all (default: the client's). Every route but a job's retry is safe
        to repeat: a repeated POST /uploads leaves an unused pending row at worst, which
        expires; a repeated complete is told the upload is already completed; a repeated
        abort is a no-op. See :meth:`retry_job` for the retry."""
        tries = tries or self.tries
        url = self.api_url + path
        data = None if body is None else json.dumps(body).encode()
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            token = self.auth.token()
            headers = {"Authorization": token, "Accept": "application/json"}
            if data is not None:
                headers["Content-Type"] = "application/json"
            try:
                answer = self.pool.request(
                    method, url, body=data, headers=headers, timeout=self.timeout_s
                )
            except urllib3.exceptions.HTTPError as exc:
                if attempt >= tries:
                    raise UnavailableError(
                        f"no answer from the API ({method} {path}): {_reason(exc)}"
                    ) from exc
                time.sleep(backoff_s(attempt))
                continue
            status = answer.status
            if status == 401:
                if not refreshed and self.auth.refresh(token):
                    refreshed = True
                    attempt -= 1
                    continue
                raise AuthError(f"the API refused {self.auth.describe} (HTTP 401): sign in again")
            if status in RETRY_STATUSES and attempt < tries:
                time.sleep(backoff_s(attempt))
                continue
            parsed = _json(answer.data)
            message = parsed.get("message") if isinstance(parsed, dict) else None
            if 200 <= status < 300:
                if isinstance(parsed, dict):
                    return parsed
                raise UnavailableError(
                    f"the API's answer to {method} {path} (HTTP {status}) is not a JSON object:"
                    " is something else answering at this address?"
                )
            if 400 <= status < 500 and status not in RETRY_STATUSES:
                field = parsed.get("field") if isinstance(parsed, dict) else None
                raise ApiError(status, str(message or answer.reason or "refused"), field)
            raise UnavailableError(
                f"the API failed ({method} {path}): HTTP {status}: {message or answer.reason}"
            )

    # --- uploads --------------------------------------------------------------------------

    def create_upload(self, filename: str, size: int, content_type: str) -> dict[str, Any]:
        return self.call(
            "POST", "/uploads", {"filename": filename, "size": size, "contentType": content_type}
        )

    def get_upload(self, upload_id: str) -> dict[str, Any]:
        return self.call("GET", f"/uploads/{_segment(upload_id)}")

    def part_urls(self, upload_id: str, numbers: list[int]) -> dict[str, Any]:
        return self.call("POST", f"/uploads/{_segment(upload_id)}/parts", {"partNumbers": numbers})

    def complete(self, upload_id: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
        return self.call("POST", f"/uploads/{_segment(upload_id)}/complete", {"parts": parts})

    def abort(self, upload_id: str) -> dict[str, Any]:
        return self.call("DELETE", f"/uploads/{_segment(upload_id)}")

    def uploads_page(
        self, limit: int = 20, cursor: str | None = None, state: str | None = None
    ) -> dict[str, Any]:
        query = {"limit": str(limit)}
        if cursor:
            query["cursor"] = cursor
        if state:
            query["state"] = state
        return self.call("GET", "/uploads?" + urlencode(query))

    def download(self, url: str, max_bytes: int = 16 << 20) -> bytes:
        """An object through a presigned GET the API handed out (a ``links`` entry): no
        Authorization header (the URL carries its signature). Retried as API calls are; S3's
        refusal (403: expired, 404) is an :class:`ApiError`. At most ``max_bytes`` are read,
        so a result that is not what it should be cannot fill the memory."""
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = self.pool.request(
                    "GET", url, timeout=self.timeout_s, preload_content=False
                )
                try:
                    data = answer.read(max_bytes + 1)
                finally:
                    answer.release_conn()
            except urllib3.exceptions.HTTPError as exc:
                if attempt >= self.tries:
                    raise UnavailableError(f"no answer from S3: {_reason(exc)}") from exc
                time.sleep(backoff_s(attempt))
                continue
            if answer.status in RETRY_STATUSES and attempt < self.tries:
                time.sleep(backoff_s(attempt))
                continue
            if 200 <= answer.status < 300:
                if len(data) > max_bytes:
                    raise UnavailableError(f"the object is larger than {max_bytes} bytes")
                return data
            if 400 <= answer.status < 500 and answer.status not in RETRY_STATUSES:
                raise ApiError(answer.status, f"S3 refused the link ({answer.reason})")
            raise UnavailableError(f"S3 failed: HTTP {answer.status} {answer.reason}")

    # --- jobs -----------------------------------------------------------------------------

    def jobs_page(
        self, limit: int = 20, cursor: str | None = None, upload_id: str | None = None
    ) -> dict[str, Any]:
        query = {"limit": str(limit)}
        if cursor:
            query["cursor"] = cursor
        if upload_id:
            query["uploadId"] = upload_id
        return self.call("GET", "/jobs?" + urlencode(query))

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self.call("GET", f"/jobs/{_segment(job_id)}")

    def retry_job(self, job_id: str) -> dict[str, Any]:
        """Put a failed job back in the queue, once. The API's answer may be lost after it did
        so (a gateway timeout, a dropped connection): asked again, it would refuse (the job
        is no longer failed: 409) or, if the job has failed again meanwhile, run it once more.
        So after each try without an answer the job is read again, and a retry that went
        through (the job is no longer failed at the attempt it was) is not repeated."""
        path = f"/jobs/{_segment(job_id)}/retry"
        seen = self.get_job(job_id)
        attempt = 0
        while True:
            attempt += 1
            try:
                return self.call("POST", path, tries=1)
            except UnavailableError:
                if attempt >= self.tries:
                    raise
            time.sleep(backoff_s(attempt))
            now = self.get_job(job_id)
            if (now.get("state"), now.get("attempts")) != (seen.get("state"), seen.get("attempts")):
                return now


def _segment(value: str) -> str:
    return quote(value, safe="")


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc)
