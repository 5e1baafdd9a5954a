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
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from offload.db import schema_options

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, OSError)


def create_pool(database_url: str, schema: str, max_size: int = 4) -> AsyncConnectionPool:
    """A closed pool; ``await pool.open(wait=False)`` before use. No per-checkout liveness
    check (it costs a round trip per statement): a broken connection fails its statement, the
    pool discards it on return, and callers retry what must land."""
    return AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=max(1, max_size),
        kwargs={"autocommit": True, "options": schema_options(schema)},
        timeout=5.0,
        reconnect_timeout=24 * 3600,
        open=False,
        name="offload",
    )


async def until_stored(
    what: str,
    job_or_upload_id: str,
    op: Callable[[], Awaitable[T]],
    *,
    initial_s: float = 0.2,
    max_s: float = 5.0,
) -> T:
    """Run ``op`` until PostgreSQL answers: an outage delays an outcome, never loses it."""
    delay = initial_s
    while True:
        try:
            return await op()
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
