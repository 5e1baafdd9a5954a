"""One PostgreSQL connection pool per process, and the retry rule for writes that must land.

The worker and each Lambda container open one small pool and share it between stores, so a
process holds as few connections as it has concurrent writers (RDS Proxy multiplexes the
Lambdas' connections further).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from offload.db import check_schema_name, schema_options

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, OSError)


_DEAD_PEER_DETECTION = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # milliseconds
}


class WrongSchema(psycopg.OperationalError):
    """A connection that should find the schema through its role's default search_path does
    not: the migrations that set it have not run for this role and database."""


def create_pool(
    database_url: str | Callable[[], Awaitable[str]],
    schema: str,
    max_size: int = 4,
    *,
    schema_from_role: bool = False,
    check_on_checkout: bool = False,
) -> AsyncConnectionPool:
    """A closed pool; ``await pool.open(wait=False)`` before use. By default no per-checkout
    liveness check (it costs a round trip per statement): a broken connection fails its
    statement, the pool discards it on return, and callers retry what must land.

    ``schema_from_role``: for RDS Proxy (or another pooler), which refuses libpq startup
    options ("RDS Proxy currently doesn't support command-line options") and pins the session
    to one database connection on a ``SET`` or a named prepared statement. Connections then
    carry no options and prepare nothing; the schema comes from the role's default search_path
    (set by the migrations), checked once per new connection.

    ``database_url`` may be a coroutine function, called before each new connection: how
    credentials that rotate reach the pool (``offload.db.credentials``).

    ``check_on_checkout``: one empty query before a connection is handed out, for processes
    whose connection idles between uses (a Lambda container between invocations): RDS Proxy
    closes client connections idle for longer than its idle timeout, and without the check the
    first statement after a quiet spell would fail instead of getting a fresh connection.

    TCP keepalives and a 30 s ``tcp_user_timeout`` make a connection whose peer vanished
    without a reset (a failover) fail in seconds, so writes are retried, instead of hanging
    until the kernel gives up (about 15 minutes)."""
    kwargs: dict[str, object] = {"autocommit": True, **_DEAD_PEER_DETECTION}
    configure = None
    if schema_from_role:
        kwargs["prepare_threshold"] = None
        configure = _expect_schema(check_schema_name(schema))
    else:
        kwargs["options"] = schema_options(schema)
    return AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=max(1, max_size),
        kwargs=kwargs,
        configure=configure,
        check=AsyncConnectionPool.check_connection if check_on_checkout else None,
        timeout=5.0,
        reconnect_timeout=24 * 3600,
        open=False,
        name="offload",
    )


def _expect_schema(schema: str) -> Callable[[psycopg.AsyncConnection], Awaitable[None]]:
    async def check(conn: psycopg.AsyncConnection) -> None:
        cursor = await conn.execute("SELECT current_schema()")
        row = await cursor.fetchone()
        found = row[0] if row else None
        if found != schema:
            raise WrongSchema(
                f"connection's schema is {found!r}, expected {schema!r}: its role has no default"
                " search_path for this database yet; run the migrations with"
                " OFFLOAD_DB_SCHEMA_FROM_ROLE=true (the deploy's migration step does)"
            )

    return check


async def until_stored(
    what: str,
    job_or_upload_id: str,
    op: Callable[[], Awaitable[T]],
    *,
    initial_s: float = 0.2,
    max_s: float = 5.0,
) -> T:
    """Run ``op`` until PostgreSQL answers: an outage delays an outcome, never loses it. A
    closed pool is not an outage (it never reopens): that error goes to the caller."""
    delay = initial_s
    while True:
        try:
            return await op()
        except PoolClosed:
            raise
        except RETRYABLE as exc:
            log.warning(
                "database write %s failed, retrying in %.1fs: %s",
                what,
                delay,
                exc.__class__.__name__,
                extra={"job_id": job_or_upload_id, "error": str(exc)[:300]},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_s)
