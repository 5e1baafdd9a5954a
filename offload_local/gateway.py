"""The local API gateway: one HTTP server for the web page (static files and its
``config.json``) and the API under ``/api``, where it does what API Gateway does in AWS: checks
the Cognito token, builds the REST proxy event and passes it to the API Lambda's container.
"""

from __future__ import annotations

import base64
import json
import logging
import mimetypes
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from offload_local.apigw import authorizer_claims, http_answer, match_resource, proxy_event
from offload_local.cognito_auth import CognitoAuthorizer, Unauthorized

API_PREFIX = "/api"
MAX_BODY_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit
log = logging.getLogger("offload_local.gateway")

Invoke = Callable[[dict[str, Any]], Any]


class Gateway:
    def __init__(
        self,
        *,
        invoke_api: Invoke,
        authorizer: CognitoAuthorizer,
        web_root: Path,
        web_config: Mapping[str, Any],
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self.invoke_api = invoke_api
        self.authorizer = authorizer
        self.web_root = web_root.resolve()
        self.web_config = dict(web_config)
        handler = type("BoundHandler", (_Handler,), {"gateway": self})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="gateway")

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class _Handler(BaseHTTPRequestHandler):
    gateway: Gateway
    protocol_version = "HTTP/1.1"
    server_version = "offload-local-gateway"

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _dispatch(self) -> None:
        started = time.monotonic()
        split = urlsplit(self.path)
        try:
            if split.path == API_PREFIX or split.path.startswith(API_PREFIX + "/"):
                self._api(split.path[len(API_PREFIX) :] or "/", split.query)
            elif self.command in ("GET", "HEAD"):
                self._static(split.path)
            else:
                self._send_json(405, {"message": "Method Not Allowed"})
        except Exception:
            log.exception("gateway error on %s %s", self.command, split.path)
            self._send_json(502, {"message": "Internal server error"})
        finally:
            elapsed_ms = (time.monotonic() - started) * 1000
            log.debug("%s %s took %.1f ms", self.command, split.path, elapsed_ms)

    # --- the API --------------------------------------------------------------------------

    def _api(self, path: str, raw_query: str) -> None:
        declared = (self.headers.get("Content-Length") or "0").strip()
        if not declared.isascii() or not declared.isdigit():  # "-1", "abc": was a 502
            self._send_json(400, {"message": "Invalid Content-Length"})
            return
        length = int(declared)
        if length > MAX_BODY_BYTES:
            self._send_json(413, {"message": "Request Too Long"})
            return
        body = self.rfile.read(length) if length else b""
        resource, _ = match_resource(path)
        if resource is None:
            # API Gateway answers unknown resources itself, before any authorizer.
            self._send_json(403, {"message": "Missing Authentication Token"})
            return
        try:
            claims = self.gateway.authorizer.claims(self.headers.get("Authorization"))
        except Unauthorized as exc:
            log.info("401 for %s %s: %s", self.command, path, exc)
            self._send_json(401, {"message": "Unauthorized"})
            return
        try:
            text = body.decode("utf-8")
            is_base64 = False
        except UnicodeDecodeError:
            text, is_base64 = base64.b64encode(body).decode(), True
        event = proxy_event(
            self.command,
            path,
            headers={name: value for name, value in self.headers.items()},
            query=parse_qs(raw_query, keep_blank_values=True) or None,
            body=text if body else None,
            is_base64=is_base64,
            claims=authorizer_claims(claims),
            source_ip=self.client_address[0],
            domain=self.headers.get("Host", "localhost"),
        )
        try:
            result = self.gateway.invoke_api(event)
        except Exception as exc:
            log.error("API Lambda failed on %s %s: %s", self.command, path, exc)
            self._send_json(502, {"message": "Internal server error"})
            return
        answer = http_answer(result)
        self._send(answer.status, answer.headers, answer.body)

    # --- the web page ---------------------------------------------------------------------

    def _static(self, path: str) -> None:
        if path in ("/config.json", "/config.json/"):
            self._send_json(200, self.gateway.web_config, cache="no-store")
            return
        if path.endswith("/"):
            path += "index.html"
        root = self.gateway.web_root
        target = (root / path.lstrip("/")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            self._send_json(404, {"message": "Not Found"})
            return
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type.endswith("javascript"):
            content_type += "; charset=utf-8"
        self._send(
            200,
            [("Content-Type", content_type), ("Cache-Control", "no-cache")],
            target.read_bytes(),
        )

    # --- answers --------------------------------------------------------------------------

    def _send_json(self, status: int, body: Any, cache: str | None = None) -> None:
        headers = [("Content-Type", "application/json")]
        if cache:
            headers.append(("Cache-Control", cache))
        self._send(status, headers, json.dumps(body).encode())

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
