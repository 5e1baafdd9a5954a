"""The retry rule for writes that must land, against a real PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest
from psycopg_pool import PoolClosed

from offload.db.pool import create_pool
from offload.db.status import JobIdentity, StatusStore
from offload.jobs import JobRef


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
