"""An HTTP proxy a test puts between a client and a real server, to make chosen requests fail
the way a network, a gateway or S3 makes them fail, and to see every request that went by.

It forwards a request with a path to ``upstream`` (a reverse proxy, as API Gateway is in front
of the API), and a request with an absolute URI to the host it names (a forward proxy, as
urllib3's ``ProxyManager`` uses one: how a test reaches presigned S3 URLs it cannot rewrite).
Rules fail the first requests that match them: with an answer of their own (a status, headers
such as ``Retry-After``, a body), by closing the connection without an answer, or by answering
with an error *after* forwarding (the server did the work; its answer was lost).
"""

from __future__ import annotations

import http.client
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
}
DROP = 0  # a rule's answer: close the connection without answering


@dataclass
class Rule:
    """Fail the requests whose method is ``method`` and whose target (path and query) matches
    ``target``, one per answer in ``answers`` (a status, or DROP), then let them through."""

    method: str
    target: re.Pattern[str]
    answers: list[int]
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    after_forwarding: bool = False
    used: int = 0

    def take(self, method: str, target: str) -> int | None:
        """The answer for this request, or None to let it through (caller holds the lock)."""
        if (
            method != self.method
            or not self.target.search(target)
            or self.used >= len(self.answers)
        ):
            return None
        self.used += 1
        return self.answers[self.used - 1]


@dataclass(frozen=True)
class Seen:
    method: str
    target: str  # path and query
    status: int  # what the client got (DROP: nothing)
    body: bytes  # the request's body, for requests other than PUT (parts are megabytes)
    headers: dict[str, str] = field(default_factory=dict)  # as the client sent them


class HttpProxy:
    def __init__(self, upstream: str | None = None):
        self.upstream = urlsplit(upstream) if upstream else None
        self.rules: list[Rule] = []
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except (ConnectionError, TimeoutError):
                    self.close_connection = True

            def __getattr__(self, name: str):
                if name.startswith("do_"):
                    return lambda: proxy._serve(self)
                raise AttributeError(name)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> HttpProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> HttpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail(
        self,
        method: str,
        target: str,
        answers: Sequence[int],
        *,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        after_forwarding: bool = False,
    ) -> Rule:
        rule = Rule(
            method, re.compile(target), list(answers), dict(headers or {}), body, after_forwarding
        )
        with self._lock:
            self.rules.append(rule)
        return rule

    def requests(self, method: str, target: str) -> list[Seen]:
        """The requests seen so far whose method is ``method`` and target matches ``target``."""
        pattern = re.compile(target)
        with self._lock:
            return [s for s in self.seen if s.method == method and pattern.search(s.target)]

    # --- serving ------------------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        method = handler.command
        destination = urlsplit(handler.path)
        if destination.scheme:  # forward proxy: absolute URI
            host, port = destination.hostname, destination.port or 80
        else:
            assert self.upstream is not None, "a path, but no upstream to send it to"
            host, port = self.upstream.hostname, self.upstream.port or 80
        target = destination.path + (f"?{destination.query}" if destination.query else "")
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        failing = self._failing(method, target)
        if failing and not failing[0].after_forwarding:
            self._fail(handler, method, target, body, *failing)
            return
        try:
            status, reason, headers, data = self._forward(handler, method, host, port, body)
        except OSError:
            self._record(method, target, DROP, body, handler)
            handler.close_connection = True
            return
        if failing:
            self._fail(handler, method, target, body, *failing)
            return
        self._record(method, target, status, body, handler)
        handler.send_response(status, reason)
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP:
                handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if method != "HEAD":
            handler.wfile.write(data)

    def _failing(self, method: str, target: str) -> tuple[Rule, int] | None:
        """The first rule that fails this request, and its answer."""
        with self._lock:
            for rule in self.rules:
                answer = rule.take(method, target)
                if answer is not None:
                    return rule, answer
        return None

    def _forward(
        self,
        handler: BaseHTTPRequestHandler,
        method: str,
        host: str | None,
        port: int,
        body: bytes,
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        destination = urlsplit(handler.path)
        path = destination.path or "/"
        if destination.query:
            path += "?" + destination.query
        if not destination.scheme and self.upstream is not None:
            path = self.upstream.path.rstrip("/") + path
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Host"] = f"{host}:{port}"
        if body or method in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(host or "127.0.0.1", port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, response.reason, response.getheaders(), data
        finally:
            conn.close()

    def _fail(
        self,
        handler: BaseHTTPRequestHandler,
        method: str,
        target: str,
        body: bytes,
        rule: Rule,
        answer: int,
    ) -> None:
        self._record(method, target, answer, body, handler)
        if answer == DROP:
            handler.close_connection = True
            return
        handler.send_response(answer)
        for name, value in rule.headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(rule.body)))
        handler.end_headers()
        handler.wfile.write(rule.body)

    def _record(
        self, method: str, target: str, status: int, body: bytes, handler: BaseHTTPRequestHandler
    ) -> None:
        seen = Seen(
            method, target, status, b"" if method == "PUT" else body, dict(handler.headers.items())
        )
        with self._lock:
            self.seen.append(seen)
