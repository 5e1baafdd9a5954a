"""Redis connection options for bullmq, from one URL.

bullmq builds its own redis-py clients from a dict of keyword arguments, one per connection
(workers get a second, blocking one). We hand it that dict rather than a ready client so the
worker keeps its dedicated blocking connection, and we set what bullmq-py gets wrong by default:

* ``socket_timeout=None``: redis-py 8 defaults to a 5 s socket timeout, shorter than the
  worker's blocking BZPOPMIN (up to 10 s). The read then times out, and an idle worker misses
  delayed jobs and long backoffs (docs/design.md, gap 1). Dead peers are found by TCP
  keepalive and ``health_check_interval`` instead.
* TLS (``rediss://``), and who logs in: a password (in the URL or given apart, so it never
  sits in a plain-text template value) or, on ElastiCache, an RBAC user with IAM
  authentication: ``user`` plus ``iam_auth_cache`` (the replication group) make redis-py ask
  ``offload.redis_iam`` for a fresh token on every connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from offload.settings import Settings

_SCHEMES = {"redis": False, "rediss": True}


def connection_options(
    url: str,
    auth_token: str | None = None,
    *,
    user: str | None = None,
    iam_auth_cache: str | None = None,
    socket_connect_timeout: float = 10.0,
) -> dict[str, Any]:
    """Keyword arguments for ``redis.asyncio.Redis`` (and so for bullmq's ``connection``).
    ``user`` overrides the URL's user name."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"Redis URL must start with redis:// or rediss://, got {parts.scheme!r}")
    db_path = parts.path.lstrip("/")
    options: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 6379,
        "db": int(db_path) if db_path else 0,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "socket_timeout": None,
        "socket_connect_timeout": socket_connect_timeout,
        "socket_keepalive": True,
        "health_check_interval": 30,
    }
    if auth_token:
        options["password"] = auth_token
    if user:
        options["username"] = user
    if iam_auth_cache:
        if not options["username"]:
            raise ValueError("Redis IAM authentication needs a user (REDIS_USER)")
        from offload.redis_iam import ElastiCacheIAMProvider  # botocore: only where used

        # redis-py refuses a credential provider beside a user name or password.
        username = options.pop("username")
        options.pop("password")
        options["credential_provider"] = ElastiCacheIAMProvider(username, iam_auth_cache)
    if _SCHEMES[parts.scheme]:
        options["ssl"] = True
        options["ssl_cert_reqs"] = "required"
    return options


def settings_connection_options(
    settings: Settings, *, socket_connect_timeout: float = 10.0
) -> dict[str, Any]:
    """``connection_options`` for the process's own Redis login as its settings say (URL,
    password, RBAC user, IAM): one place, so no client forgets the user or the IAM token."""
    return connection_options(
        settings.redis_url,
        settings.redis_auth_token,
        user=settings.redis_user,
        iam_auth_cache=settings.redis_iam_auth_cache,
        socket_connect_timeout=socket_connect_timeout,
    )


def redact(url: str) -> str:
    """The URL without its credentials, for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
