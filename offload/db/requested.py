"""Recording a job a user asked for (``POST /jobs``), within the per-user limits.

The count and the insert run in one transaction under a per-owner advisory lock (as the upload
quotas do, ``offload.db.uploads``): two concurrent requests can never both take the last slot.
Counted: the owner's requested jobs (by name) in flight (``queued``, ``active``, ``retrying``)
and those created in the last hour, whatever became of them. The row is inserted ``queued`` with
its event (``offload.db.status.MARK_QUEUED``); the caller adds the job to the queue after the
commit, and if that fails the row is a queued job missing from the queue, which the reconciler
re-queues from the row (``offload.requested_jobs`` says why it can).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from psycopg_pool import AsyncConnectionPool

from offload.db.status import MARK_QUEUED, JobIdentity
from offload.quotas import QuotaExceeded

HOUR = timedelta(hours=1)
IN_FLIGHT_RETRY_S = 60  # a requested job usually finishes within a minute

_USAGE = """
SELECT count(*) FILTER (WHERE state IN ('queued', 'active', 'retrying')),
       count(*) FILTER (WHERE created_at > %(since)s),
       min(created_at) FILTER (WHERE created_at > %(since)s)
FROM jobs WHERE owner = %(owner)s AND name = ANY(%(names)s)
"""


async def record_requested_job(
    pool: AsyncConnectionPool,
    identity: JobIdentity,
    max_attempts: int,
    *,
    names: tuple[str, ...],
    in_flight_limit: int,
    per_hour_limit: int,
    tier: str,
) -> None:
    """Insert the job's ``queued`` row, or raise :class:`QuotaExceeded` (429)."""
    assert identity.ref is not None and identity.ref.owner
    owner = identity.ref.owner
    now = datetime.now(UTC)
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('offload-requested-jobs:' || %s))", (owner,)
        )
        cursor = await conn.execute(
            _USAGE, {"owner": owner, "names": list(names), "since": now - HOUR}
        )
        row = await cursor.fetchone()
        assert row is not None
        in_flight, last_hour, oldest = row
        if in_flight_limit and in_flight >= in_flight_limit:
            raise QuotaExceeded(
                f"at most {in_flight_limit} requested jobs may run at once",
                quota="requestedJobsInFlight",
                limit=in_flight_limit,
                tier=tier,
                retry_after_s=IN_FLIGHT_RETRY_S,
            )
        if per_hour_limit and last_hour >= per_hour_limit:
            leaves = (oldest + HOUR - now).total_seconds() if oldest else 1
            raise QuotaExceeded(
                f"at most {per_hour_limit} jobs may be requested per hour",
                quota="requestedJobsPerHour",
                limit=per_hour_limit,
                tier=tier,
                retry_after_s=max(1, math.ceil(leaves)),
            )
        await conn.execute(
            MARK_QUEUED, identity.columns() | {"max_attempts": max_attempts, "message": None}
        )
