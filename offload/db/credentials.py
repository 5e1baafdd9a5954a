"""Database credentials, fetched again when a connection is opened: an IAM token for the
component's own database user (the runtime), or the RDS secret (the migrations only).

IAM (``DATABASE_IAM_USER``): each component logs in as its own role (``offload.db.roles``)
with a token from ``rds:generate_db_auth_token``, signed by its IAM role, which may
``rds-db:connect`` as that user only. No password exists at run time, so none can leak from a
Lambda or a task; a token is good for logins within 15 minutes, so one is kept for
``IAM_TOKEN_MAX_AGE_S`` and signed again after.

Secret (``DATABASE_SECRET_ARN``, the master user):
The RDS secret rotates (``rotationDays``): once it has, the old password is refused for new
connections, while connections already open keep working. A process that read the secret
once at start would lose the database within the hour it takes its pool to replace every
connection (``max_lifetime``), and nothing restarts a worker or a warm Lambda container for
that. So the pool asks for the URL each time it opens a connection, and the secret is read
again when the copy in hand is older than ``max_age_s``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from offload import aws
from offload.settings import DATABASE_CA_FILE, Settings, tls_query

DEFAULT_MAX_AGE_S = 15.0  # after a rotation, new connections fail for at most this long
IAM_TOKEN_MAX_AGE_S = 600.0  # tokens are accepted for 15 min: 5 min of margin


def database_url_from_secret(
    secret: str,
    host_override: str | None = None,
    sslmode: str = "verify-full",
    sslrootcert: str = DATABASE_CA_FILE,
) -> str:
    """An RDS-format secret (username, password, host, port, dbname) as a libpq URL; the host
    is replaced by the RDS Proxy endpoint when one is given. RDS and its proxy take TLS only,
    and verify-full checks the server against ``sslrootcert`` (a TLS server that only claims
    the name would otherwise get the password); other modes are for local servers (tests)."""
    fields = json.loads(secret)
    host = host_override or fields["host"]
    user = quote(fields["username"], safe="")
    password = quote(fields["password"], safe="")
    return (
        f"postgresql://{user}:{password}@{host}:{fields.get('port', 5432)}/"
        f"{fields.get('dbname', 'postgres')}?{tls_query(sslmode, sslrootcert)}"
    )


class _ExpiringUrl:
    """A URL made again once the copy in hand is ``max_age_s`` old. Calling the object is a
    coroutine giving the URL (psycopg_pool calls it before each new connection); ``url()`` is
    the blocking form, for one-off connections such as the migrations. Subclasses say how a
    URL is made (``_make``: a network call, hence the lock and the thread)."""

    def __init__(self, max_age_s: float, initial: str | None):
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._url = initial
        self._made_at = time.monotonic() if initial else float("-inf")

    def _make(self) -> str:
        raise NotImplementedError

    def _fresh(self) -> bool:
        return self._url is not None and time.monotonic() - self._made_at < self._max_age_s

    def url(self) -> str:
        with self._lock:
            if not self._fresh():
                self._url = self._make()
                self._made_at = time.monotonic()
            assert self._url is not None
            return self._url

    async def __call__(self) -> str:
        if self._fresh():
            assert self._url is not None
            return self._url
        return await asyncio.to_thread(self.url)  # boto3 blocks: keep it off the event loop


class SecretDatabaseUrl(_ExpiringUrl):
    """The database URL built from a secret, read again once ``max_age_s`` old (it may have
    rotated)."""

    def __init__(
        self,
        secret_arn: str,
        host_override: str | None = None,
        *,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        read: Callable[[str], str] = aws.secret_string,
        initial: str | None = None,
        sslmode: str = "verify-full",
        sslrootcert: str = DATABASE_CA_FILE,
    ):
        super().__init__(max_age_s, initial)
        self._arn = secret_arn
        self._host = host_override
        self._sslmode = sslmode
        self._sslrootcert = sslrootcert
        self._read = read

    def _make(self) -> str:
        secret = self._read(self._arn)
        return database_url_from_secret(secret, self._host, self._sslmode, self._sslrootcert)

    def __repr__(self) -> str:  # never the password
        return f"SecretDatabaseUrl({self._arn!r}, host_override={self._host!r})"


def database_url_with_token(
    base_url: str,
    user: str,
    token: str,
    *,
    host: str | None = None,
    sslmode: str | None = None,
    sslrootcert: str | None = None,
) -> str:
    """``base_url`` (host, port, database, TLS options; any user or password in it is
    replaced) logging in as ``user`` with ``token`` as its password. ``host``, ``sslmode``
    and ``sslrootcert`` replace the base's when given; the base's are kept otherwise, so TLS
    settings come from wherever the base URL got them. A libpq conninfo string (the token
    holds characters a URL would need escaped)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo  # only IAM logins need it

    params: dict[str, Any] = dict(conninfo_to_dict(base_url))
    params.update(user=user, password=token)
    for name, value in (("host", host), ("sslmode", sslmode), ("sslrootcert", sslrootcert)):
        if value:
            params[name] = value
    return make_conninfo("", **params)


class IamDatabaseUrl(_ExpiringUrl):
    """The database URL for ``user`` with a fresh IAM token as password, signed again once
    ``max_age_s`` old. The token is signed for the host the connection goes to (the
    RDS Proxy endpoint when ``host_override`` is set), as RDS checks."""

    def __init__(
        self,
        base_url: str,
        user: str,
        host_override: str | None = None,
        *,
        sslmode: str | None = None,
        sslrootcert: str | None = None,
        max_age_s: float = IAM_TOKEN_MAX_AGE_S,
        sign: Callable[[str, int, str], str] = aws.rds_auth_token,
        initial: str | None = None,
    ):
        from psycopg.conninfo import conninfo_to_dict

        super().__init__(max_age_s, initial)
        base = conninfo_to_dict(base_url)
        self._host = host_override or str(base.get("host") or "")
        if not self._host:
            raise ValueError("IAM database authentication needs a host (DATABASE_HOST)")
        self._port = int(str(base.get("port") or 5432))
        self._base = base_url
        self._user = user
        self._ssl = {"sslmode": sslmode, "sslrootcert": sslrootcert}
        self._sign = sign

    def _make(self) -> str:
        token = self._sign(self._host, self._port, self._user)
        return database_url_with_token(self._base, self._user, token, host=self._host, **self._ssl)

    def __repr__(self) -> str:  # never the token
        return f"IamDatabaseUrl(user={self._user!r}, host={self._host!r})"


def database_url_source(
    settings: Settings, initial: str | None = None
) -> str | Callable[[], Awaitable[str]]:
    """What a pool connects with: a fresh IAM token for ``DATABASE_IAM_USER`` when set; the
    secret, read again when it may have rotated, when ``DATABASE_SECRET_ARN`` is set;
    otherwise the fixed ``database_url``."""
    if settings.database_iam_user:
        return _iam_source(settings, initial)
    if not settings.database_secret_arn:
        return settings.database_url
    return SecretDatabaseUrl(
        settings.database_secret_arn,
        settings.database_proxy_host,
        initial=initial,
        sslmode=settings.database_sslmode,
        sslrootcert=settings.database_sslrootcert,
    )


def resolve_database_url(settings: Settings) -> str:
    """The URL to connect with now (one-off connections: migrations, scripts)."""
    if settings.database_iam_user:
        return _iam_source(settings).url()
    if not settings.database_secret_arn:
        return settings.database_url
    return SecretDatabaseUrl(
        settings.database_secret_arn,
        settings.database_proxy_host,
        sslmode=settings.database_sslmode,
        sslrootcert=settings.database_sslrootcert,
    ).url()


def _iam_source(settings: Settings, initial: str | None = None) -> IamDatabaseUrl:
    assert settings.database_iam_user
    return IamDatabaseUrl(
        settings.database_url,
        settings.database_iam_user,
        settings.database_proxy_host,
        initial=initial,
    )
