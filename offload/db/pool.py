"""One PostgreSQL connection pool per process, and the retry rule for writes that must land.

The worker and each Lambda container open one small pool and share it between stores, so a
process holds as few connections as it has concurrent writers (RDS Proxy multiplexes the
Lambdas' connections further).

After an outage the pool reconnects for the first caller that asks, not on a timer:
psycopg_pool's own reconnection retries a lost connection in the background with a backoff
that doubles (1, 2, 4, 8, 16 s, ...) for ``reconnect_timeout``, and callers wait for its next
tick meanwhile: after a 15 s outage the API answered 503 for about as long again, and the
worker's status writes waited as long; the longer the outage, the longer the wait after it.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from time import monotonic
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from offload.db import check_schema_name, schema_options

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, OSError)

# How often a caller waiting for a connection asks the pool to try connecting again.
RECONNECT_EVERY_S = 1.0


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
    check_after_idle_s: float | None = None,
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

    ``check_after_idle_s``: one empty query before a connection that has been idle that long is
    handed out, for processes whose connection idles between uses (a Lambda container between
    invocations): RDS Proxy closes client connections idle for longer than its idle timeout,
    and without the check the first statement after a quiet spell would fail instead of getting
    a fresh connection. A connection back in the pool for less than that is trusted: checking
    every checkout cost a round trip per statement (half of the enqueue function's round trips,
    and ~15 % of its CPU, under load).

    TCP keepalives and a 30 s ``tcp_user_timeout`` make a connection whose peer vanished
    without a reset (a failover) fail in seconds, so writes are retried, instead of hanging
    until the kernel gives up (about 15 minutes).

    A caller waits at most 5 s for a connection (``PoolTimeout``, which the API answers with
    503 and ``until_stored`` retries); while it waits, the pool tries to connect every
    ``RECONNECT_EVERY_S`` (OnDemandPool), so the first caller after an outage gets through."""
    kwargs: dict[str, object] = {"autocommit": True, **_DEAD_PEER_DETECTION}
    configure = None
    if schema_from_role:
        kwargs["prepare_threshold"] = None
        configure = _expect_schema(check_schema_name(schema))
    else:
        kwargs["options"] = schema_options(schema)
    return OnDemandPool(
        database_url,
        min_size=1,
        max_size=max(1, max_size),
        kwargs=kwargs,
        configure=configure,
        **(_idle_check(check_after_idle_s) if check_after_idle_s is not None else {}),
        timeout=5.0,
        reconnect_timeout=0,  # no background retries on a timer: see OnDemandPool
        open=False,
        name="offload",
    )


def _idle_check(after_s: float) -> dict[str, Any]:
    """The pool's ``check`` and ``reset`` callbacks: note when each connection comes back, and
    check one that has been back for ``after_s`` or longer before handing it out again."""
    returned_at: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = (
        weakref.WeakKeyDictionary()
    )

    async def note_return(conn: psycopg.AsyncConnection[Any]) -> None:
        returned_at[conn] = monotonic()

    async def check(conn: psycopg.AsyncConnection[Any]) -> None:
        back_since = returned_at.get(conn)
        if back_since is None or monotonic() - back_since >= after_s:
            await AsyncConnectionPool.check_connection(conn)

    return {"check": check, "reset": note_return}


class OnDemandPool(AsyncConnectionPool):
    """A pool that tries to connect when a caller needs a connection, and only then.

    With ``reconnect_timeout=0`` a failed connection attempt is retried once, at once, and then
    the pool gives up that connection instead of retrying it on a growing timer; a caller that
    finds the pool short of connections makes it connect (psycopg_pool grows the pool for a
    caller that has to wait). What psycopg_pool does not do is try again for a caller already
    waiting, so :meth:`getconn` waits in slices of ``RECONNECT_EVERY_S``, asking again after
    each: a caller that waits through the end of an outage gets a connection within that much
    of PostgreSQL answering. Nobody waiting, nothing tries: an idle worker does not knock on a
    database that is down, and a Lambda container's loop only runs during an invocation
    anyway. Public psycopg_pool API only (``reconnect_timeout``, ``getconn``).

    The price: a caller waiting for a busy pool (every connection in use) rejoins the queue at
    its end every slice; our pools have a connection per concurrent writer, so callers rarely
    queue at all."""

    async def getconn(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 (psycopg_pool's signature)
    ) -> psycopg.AsyncConnection[Any]:
        total = self.timeout if timeout is None else timeout
        deadline = monotonic() + total
        while True:
            remaining = deadline - monotonic()
            try:
                return await super().getconn(timeout=min(remaining, RECONNECT_EVERY_S))
            except PoolTimeout:
                if remaining <= RECONNECT_EVERY_S:
                    raise PoolTimeout(f"couldn't get a connection after {total:.2f} sec") from None


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
