"""What a Lambda container keeps between invocations: settings, one event loop, one
PostgreSQL pool, one Redis queue connection.

bullmq and our stores are asyncio code, and their connections belong to the loop that opened
them, so each container runs every invocation on the same long-lived loop instead of
``asyncio.run`` (which would close the loop, and the connections with it, after each call).

Secrets: Lambda cannot inject Secrets Manager values into environment variables, so when
``REDIS_AUTH_SECRET_ARN`` is set, the token is fetched at cold start and never logged. The
database login is an IAM token for the function's own database user (``DATABASE_IAM_USER``,
signed at cold start and again before a new connection once it is ten minutes old); only the
migrations function reads the master secret (``DATABASE_SECRET_ARN``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import replace
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar

from offload import aws
from offload.db.credentials import database_url_source, resolve_database_url
from offload.settings import Settings

# PostgreSQL (psycopg, ~150 ms) and bullmq (~200 ms) are imported by the first call that needs
# them, so a function that uses only one of them does not pay for both at cold start.
if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from offload.db.job_queries import JobQueries
    from offload.db.status import StatusStore
    from offload.db.uploads import UploadStore
    from offload.queue import Producer

T = TypeVar("T")
# A connection unused for this long is checked before use; one used moments ago (the previous
# statement of this invocation, or of the one before under load) is not.
CHECK_AFTER_IDLE_S = 5.0
_loop: asyncio.AbstractEventLoop | None = None


def run(coro: Coroutine[Any, Any, T]) -> T:
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
        asyncio.set_event_loop(_loop)
    return _loop.run_until_complete(coro)


@cache
def settings() -> Settings:
    base = Settings.from_env()
    overrides: dict[str, Any] = {}
    # Read (or signed) now; the pool asks again when the secret may have rotated or the token
    # is getting old.
    if base.database_secret_arn or base.database_iam_user:
        overrides["database_url"] = resolve_database_url(base)
    if base.redis_auth_secret_arn:
        overrides["redis_auth_token"] = aws.secret_string(base.redis_auth_secret_arn)
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
            database_url_source(current, initial=current.database_url),
            current.database_schema,
            max_size=1,
            schema_from_role=current.database_schema_from_role,
            # idle between invocations: RDS Proxy closes idle clients
            check_after_idle_s=CHECK_AFTER_IDLE_S,
        )
        await _pool.open(wait=False)
    return _pool


async def uploads() -> UploadStore:
    from offload.db.uploads import UploadStore

    return UploadStore(await pool())


async def job_queries() -> JobQueries:
    from offload.db.job_queries import JobQueries

    return JobQueries(await pool())


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
