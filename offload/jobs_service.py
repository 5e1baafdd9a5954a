"""The job routes' domain: the caller's jobs as the API shows them, one page at a time, and the
retry of a failed one. The job routes' counterpart of :class:`offload.uploads.UploadService`.

* ``GET /jobs``: ``limit`` (1..``MAX_LIMIT``, default ``DEFAULT_LIMIT``) and ``cursor`` (one
  the API handed out) are checked before any query (:func:`parse_list_params`).
* A job's answer (:meth:`JobService.answer`) carries ``links``, presigned GETs of a completed
  job's outputs, except for a superseded job (one for an older version of its upload's
  object: the outputs' keys are the upload's, and hold the newest version's outputs) and for
  outputs the lifecycle rule may have archived, which are flagged ``outputsArchived`` instead.
* A retry (:meth:`JobService.retry`) is claimed in PostgreSQL before bullmq is asked, so a
  failure is retried once whatever races it.

Every lookup is scoped by the caller's ``sub``: another user's job looks exactly like a job
that does not exist (:class:`NotFound`). Methods raise :class:`RequestError` subclasses for
everything the caller can fix.

This module imports psycopg (through ``offload.db.job_queries``): the API imports it with the
first job request, not at cold start. The S3 client and the queue are asked for only when an
answer needs links or a retry reaches bullmq (boto3 and bullmq are imported then).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from offload.db.job_queries import (
    DEFAULT_LIMIT,
    JOB_ID,
    MAX_LIMIT,
    Cursor,
    InvalidCursor,
    JobQueries,
    JobRow,
    decode_cursor,
    encode_cursor,
    job_view,
)
from offload.keys import PROCESSED_PREFIX, UPLOADS_PREFIX
from offload.uploads import Conflict, InvalidRequest, NotFound, outputs_archived, result_links

if TYPE_CHECKING:
    from offload.db.status import StatusStore
    from offload.settings import Settings

_LIMIT = re.compile(r"[0-9]{1,4}")
_GONE = "job is no longer in the queue (past retention) and cannot be retried"


def parse_list_params(limit: str | None, cursor: str | None) -> tuple[int, Cursor | None]:
    """The query string of ``GET /jobs`` (absent parameters are None) as a page size and the
    position to start after."""
    size = DEFAULT_LIMIT
    if limit is not None:
        if not _LIMIT.fullmatch(limit) or not 1 <= int(limit) <= MAX_LIMIT:
            raise InvalidRequest(f"limit must be an integer within 1..{MAX_LIMIT}", field="limit")
        size = int(limit)
    after = None
    if cursor is not None:
        try:
            after = decode_cursor(cursor)
        except InvalidCursor as exc:
            raise InvalidRequest(str(exc), field="cursor") from exc
    return size, after


def own_result(owner: str, result: Any) -> Any:
    """A job's result without the output keys (``*_key`` values) outside the caller's
    namespace: a processor names only its upload's outputs, and one that named another key
    (a bug) must not show it to the user, as :func:`offload.uploads.result_links` never signs
    it."""
    if not isinstance(result, dict):
        return result
    prefixes = (f"{UPLOADS_PREFIX}{owner}/", f"{PROCESSED_PREFIX}{owner}/")
    return {
        name: value
        for name, value in result.items()
        if not (name.endswith("_key") and isinstance(value, str) and not value.startswith(prefixes))
    }


class JobService:
    """The job routes' logic over the owner-scoped job queries and the status store (one
    PostgreSQL pool). ``s3`` gives the S3 client (sync boto3) and ``queue`` the bullmq queue
    of a name (the main queue or a step queue, ``offload.step_limits``); both are called only
    when needed."""

    def __init__(
        self,
        settings: Settings,
        queries: JobQueries,
        statuses: StatusStore,
        *,
        s3: Callable[[], Any],
        queue: Callable[[str], Awaitable[Any]],
    ):
        self.settings = settings
        self.queries = queries
        self.statuses = statuses
        self._s3 = s3
        self._queue = queue

    async def _owned(self, owner: str, job_id: str) -> JobRow:
        row = None
        if JOB_ID.fullmatch(job_id):
            row = await self.queries.get_for_owner(job_id, owner)
        if row is None:
            raise NotFound("job not found")
        return row

    def answer(self, owner: str, row: JobRow) -> dict[str, Any]:
        """A job as the API shows it: :func:`job_view`, ``links`` and ``outputsArchived``."""
        view = job_view(row)
        view["result"] = own_result(owner, row.result)
        view["links"] = []
        view["outputsArchived"] = False
        if row.state == "completed" and row.upload_id and not row.superseded:
            settings = self.settings
            now = datetime.now(UTC)
            if outputs_archived(row.finished_at, settings.processed_archive_after_days, now):
                view["outputsArchived"] = True  # a link would answer InvalidObjectState
                return view
            view["links"] = result_links(
                self._s3(),
                settings.upload_bucket,
                owner,
                row.upload_id,
                row.result,
                settings.url_expiry_s,
            )
        return view

    async def page(self, owner: str, limit: str | None, cursor: str | None) -> dict[str, Any]:
        """One page of the owner's jobs, newest first, and the cursor of the next page."""
        size, after = parse_list_params(limit, cursor)
        rows, next_cursor = await self.queries.list_for_owner(owner, size, after)
        return {
            "jobs": [self.answer(owner, row) for row in rows],
            "nextCursor": encode_cursor(next_cursor) if next_cursor else None,
        }

    async def get(self, owner: str, job_id: str) -> dict[str, Any]:
        return self.answer(owner, await self._owned(owner, job_id))

    async def retry(self, owner: str, job_id: str) -> dict[str, Any]:
        """Claim the row in PostgreSQL, then ask bullmq, then commit the claim (StatusStore.
        retry_claim says why in that order and what each failure leaves behind).

        Only the request whose claim wins touches the queue: a double click, or two clients,
        get one 200 and one 409, and the job runs once more, never twice. bullmq's own retry is
        atomic, but it cannot tell a second retry of the same failure from a retry of the next
        one: a second request that read the row before the first retry and reaches bullmq after
        the job ran and failed again (a cold container is slower than a job that fails at once)
        would run it a second time. The claim is guarded by the attempt the request saw, so it
        cannot.

        A 503 (PostgreSQL or Redis out of reach at any step) never leaves the row claimed: the
        claim rolls back unless it committed after bullmq accepted. Whether bullmq applied the
        retry is then unknown to us, and needs no repair: if it did, the job runs and the
        worker's ``active`` (a later attempt) overwrites the ``failed`` row; if it did not, the
        row and the queue still agree that the job failed, and the client may retry."""
        row = await self._owned(owner, job_id)
        if row.state != "failed":
            raise Conflict(f"job is {row.state}; only a failed job can be retried")
        if row.superseded:
            # Run again, it would write the upload's outputs over the newest version's.
            raise Conflict(
                "job is for an older version of the uploaded object; it cannot be retried"
            )
        # Before the claim: keep the row locked briefly. The queue the row says the job is in.
        queue = await self._queue(row.queue or self.settings.queue_name)
        async with self.statuses.retry_claim(
            job_id, row.attempt, owner=owner, message="retry requested"
        ) as claimed:
            if not claimed:
                raise Conflict("job was retried meanwhile; only a failed job can be retried")
            job = await queue.getJob(job_id)
            if job is None:
                raise Conflict(_GONE)
            try:
                await job.retry("failed")
            except TypeError as exc:  # bullmq: not in the failed set, or no such job any more
                if await queue.getJob(job_id) is None:
                    raise Conflict(_GONE) from exc
                raise Conflict("job is not failed in the queue; it may still be finishing") from exc
            # A fresh stall allowance: bullmq keeps the stall count across retries, so a job
            # the stall limit failed would fail again at its next single crash. (Milliseconds
            # after the move, long before a run could stall: that takes a whole lock duration.)
            await queue.client.hdel(queue.toKey(job_id), "stc")
        return self.answer(owner, await self._owned(owner, job_id))
