"""What a Lambda container keeps between invocations: settings, one event loop, one
PostgreSQL pool, one Redis queue connection.

bullmq and our stores are asyncio code, and their connections belong to the loop that opened
them, so each container runs every invocation on the same long-lived loop instead of
``asyncio.run`` (which would close the loop, and the connections with it, after each call).

Secrets: Lambda cannot inject Secrets Manager values into environment variables, so when
``DATABASE_SECRET_ARN`` / ``REDIS_AUTH_SECRET_ARN`` are set, the values are fetched once per
container (cold start) and never logged.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Coroutine
from dataclasses import replace
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from offload.settings import Settings

# PostgreSQL (psycopg, ~150 ms) and bullmq (~200 ms) are imported by the first call that needs
# them, so a function that uses only one of them does not pay for both at cold start.
if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from offload.db.status import StatusStore
    from offload.db.uploads import UploadStore
    from offload.queue import Producer

T = TypeVar("T")
_loop: asyncio.AbstractEventLoop | None = None


def run(coro: Coroutine[Any, Any, T]) -> T:
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
        asyncio.set_event_loop(_loop)
    return _loop.run_until_complete(coro)


def _secret_string(arn: str) -> str:
    import boto3

    client = boto3.client("secretsmanager", endpoint_url=os.environ.get("SECRETS_ENDPOINT_URL"))
    return client.get_secret_value(SecretId=arn)["SecretString"]


def database_url_from_secret(secret: str, host_override: str | None = None) -> str:
    """An RDS-format secret (username, password, host, port, dbname) as a libpq URL; the host
    is replaced by the RDS Proxy endpoint when one is given."""
    fields = json.loads(secret)
    host = host_override or fields["host"]
    user = quote(fields["username"], safe="")
    password = quote(fields["password"], safe="")
    return (
        f"postgresql://{user}:{password}@{host}:{fields.get('port', 5432)}/"
        f"{fields.get('dbname', 'postgres')}?sslmode=require"
    )


@cache
def settings() -> Settings:
    base = Settings.from_env()
    overrides: dict[str, Any] = {}
    if arn := os.environ.get("DATABASE_SECRET_ARN"):
        proxy_host = os.environ.get("DATABASE_PROXY_HOST")
        overrides["database_url"] = database_url_from_secret(_secret_string(arn), proxy_host)
        if proxy_host:  # RDS Proxy refuses startup options: see offload.db.pool.create_pool
            overrides["database_schema_from_role"] = True
    if arn := os.environ.get("REDIS_AUTH_SECRET_ARN"):
        overrides["redis_auth_token"] = _secret_string(arn)
    return replace(base, **overrides) if overrides else base


_pool: AsyncConnectionPool | None = None
_producer: Producer | None = None


async def pool() -> AsyncConnectionPool:
    """One connection per container: a Lambda handles one request at a time."""
    global _pool
    if _pool is None:
        from offload.db.pool import create_pool

        current = settings()
        _pool = create_pool(
            current.database_url,
            current.database_schema,
            max_size=1,
            schema_from_role=current.database_schema_from_role,
        )
        await _pool.open(wait=False)
    return _pool


async def uploads() -> UploadStore:
    from offload.db.uploads import UploadStore

    return UploadStore(await pool())


async def statuses() -> StatusStore:
    from offload.db.status import StatusStore

    return StatusStore(await pool())


async def producer() -> Producer:
    global _producer
    if _producer is None:
        from offload.queue import Producer

        _producer = Producer(settings(), await pool())
    return _producer


def reset() -> None:
    """Forget the container's state (tests switch settings between cases)."""
    global _pool, _producer, _loop
    if _loop is not None and not _loop.is_closed():
        if _producer is not None:
            _loop.run_until_complete(_producer.close())
        if _pool is not None:
            _loop.run_until_complete(_pool.close())
        _loop.close()
    _pool = _producer = _loop = None
    settings.cache_clear()
