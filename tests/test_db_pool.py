"""The pool and the retry rule for writes that must land, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import pytest
from psycopg_pool import PoolClosed

from offload.db.pool import RETRYABLE, create_pool, until_stored
from offload.db.status import JobIdentity, StatusStore
from offload.jobs import JobRef
from tests.support.tcpproxy import proxy_for, url_through

# psycopg_pool's reconnect timer doubled (1, 2, 4, 8, 16 s, ...): after 18 s of outage its next
# try is at least 10 s away.
OUTAGE_S = 18.0


def test_a_write_after_the_pool_closed_fails_at_once(database_url, pg_schema):
    """PoolClosed is an OperationalError, which outcome writes retry until PostgreSQL answers;
    a closed pool never reopens, so retrying it would hang its caller forever."""

    async def scenario() -> None:
        pool = create_pool(database_url, pg_schema, max_size=1)
        await pool.open(wait=True, timeout=10)
        store = StatusStore(pool)
        identity = JobIdentity("job-1", "inspect", "q", JobRef("bucket", "uploads/a/b/c.bin"))
        assert await store.mark_queued(identity, 3)
        await pool.close()
        with pytest.raises(PoolClosed):
            await asyncio.wait_for(store.mark_active(identity, 1, 3, "worker"), timeout=5)

    asyncio.run(scenario())


@pytest.mark.slow
def test_the_first_write_after_an_outage_lands_on_its_first_try(database_url, pg_schema):
    """The worker's outcome writes (until_stored over create_pool's pool) share the pool with
    the API. During an outage long enough for psycopg_pool's reconnect timer to have doubled
    to 16 s, tries fail (5 s each, the pool's wait); the first write once PostgreSQL is back
    gets a connection on its first try, instead of failing until that timer's next tick."""
    proxy = proxy_for(database_url, 5432)
    pool = create_pool(url_through(database_url, proxy.port), pg_schema, max_size=2)
    tries: list[bool] = []

    async def one_try() -> None:
        try:
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
        except RETRYABLE:
            tries.append(False)
            raise
        tries.append(True)

    async def scenario() -> int:
        await pool.open(wait=True, timeout=10)
        try:
            proxy.cut()
            cut_at = time.monotonic()
            while time.monotonic() - cut_at < OUTAGE_S:
                with pytest.raises(RETRYABLE):
                    await one_try()
            during = len(tries)
            proxy.restore()
            await asyncio.wait_for(until_stored("probe", "job-1", one_try), timeout=60)
            return during
        finally:
            await pool.close()

    try:
        during = asyncio.run(scenario())
    finally:
        proxy.stop()
    assert during >= 3
    assert tries[during:] == [True]
