"""Database credentials from Secrets Manager, read again when a connection is opened.

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
from urllib.parse import quote

from offload import aws
from offload.settings import DATABASE_CA_FILE, Settings, tls_query

DEFAULT_MAX_AGE_S = 15.0  # after a rotation, new connections fail for at most this long


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


class SecretDatabaseUrl:
    """The database URL built from a secret, cached for ``max_age_s``. Calling the object is
    a coroutine giving the URL (psycopg_pool calls it before each new connection); ``url()``
    is the blocking form, for one-off connections such as the migrations."""

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
        self._arn = secret_arn
        self._host = host_override
        self._sslmode = sslmode
        self._sslrootcert = sslrootcert
        self._max_age_s = max_age_s
        self._read = read
        self._lock = threading.Lock()
        self._url = initial
        self._read_at = time.monotonic() if initial else float("-inf")

    def _fresh(self) -> bool:
        return self._url is not None and time.monotonic() - self._read_at < self._max_age_s

    def url(self) -> str:
        with self._lock:
            if not self._fresh():
                secret = self._read(self._arn)
                self._url = database_url_from_secret(
                    secret, self._host, self._sslmode, self._sslrootcert
                )
                self._read_at = time.monotonic()
            assert self._url is not None
            return self._url

    async def __call__(self) -> str:
        if self._fresh():
            assert self._url is not None
            return self._url
        return await asyncio.to_thread(self.url)  # boto3 blocks: keep it off the event loop

    def __repr__(self) -> str:  # never the password
        return f"SecretDatabaseUrl({self._arn!r}, host_override={self._host!r})"


def database_url_source(
    settings: Settings, initial: str | None = None
) -> str | Callable[[], Awaitable[str]]:
    """What a pool connects with: the secret, read again when it may have rotated, when
    ``DATABASE_SECRET_ARN`` is set; otherwise the fixed ``database_url``."""
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
    if not settings.database_secret_arn:
        return settings.database_url
    return SecretDatabaseUrl(
        settings.database_secret_arn,
        settings.database_proxy_host,
        sslmode=settings.database_sslmode,
        sslrootcert=settings.database_sslrootcert,
    ).url()
