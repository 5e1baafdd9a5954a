"""The job routes' domain: the caller's jobs as the API shows them, one page at a time, and the
retry of a failed one. The job routes' counterpart of :class:`offload.uploads.UploadService`.

* ``GET /jobs``: ``limit`` (1..``MAX_LIMIT``, default ``DEFAULT_LIMIT``), ``cursor`` (one
  the API handed out) and ``uploadId`` (an upload id's shape) are checked before any query
  (:func:`offload.pages.parse_list_params`). ``uploadId`` only filters: an upload that is not
  the caller's (someone else's, or none at all) has no jobs of the caller, an empty page.
* An upload's pipeline (:meth:`JobService.pipelines`, for ``GET /uploads`` and
  ``GET /uploads/{id}``): its ``finalize`` job and its steps, each as ``GET /jobs/{id}``
  shows it, and whether the upload is ``finished``.
* A job's answer (:meth:`JobService.answer`) carries ``links``, presigned GETs of a completed
  job's outputs, except for a superseded job (one for an older version of its upload's
  object: the outputs' keys are the upload's, and hold the newest version's outputs) and for
  outputs the lifecycle rule may have archived, which are flagged ``outputsArchived`` instead.
* A retry (:meth:`JobService.retry`) is claimed in PostgreSQL before bullmq is asked, so a
  failure is retried once whatever races it.
* ``POST /jobs`` (:meth:`JobService.request`): a job the caller asks for by name, with its
  parameters (``offload.requested_jobs``), recorded within the per-user limits
  (``offload.db.requested``) before it is added to the queue; its answer is the job's (202).
  A completed requested job's ``links`` sign what it wrote under the caller's exports.

Every lookup is scoped by the caller's ``sub``: another user's job looks exactly like a job
that does not exist (:class:`NotFound`). Methods raise :class:`RequestError` subclasses for
everything the caller can fix.

This module imports psycopg (through ``offload.db.job_queries``): the API imports it with the
first job request, not at cold start. The S3 client and the queue are asked for only when an
answer needs links or a retry reaches bullmq (boto3 and bullmq are imported then).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from offload.db.job_queries import JOB_ID, JobQueries, JobRow, job_view
from offload.keys import PROCESSED_PREFIX, UPLOADS_PREFIX
from offload.pages import encode_cursor, parse_list_params
from offload.pipelines import FINALIZE
from offload.uploads import (
    FINAL_STATES,
    Conflict,
    InvalidRequest,
    NotFound,
    outputs_archived,
    result_links,
    valid_upload_id,
)

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from offload.db.status import RetryClaim, StatusStore
    from offload.db.uploads import Upload
    from offload.settings import Settings

_GONE = "job is no longer in the queue (past retention) and cannot be retried"
FINAL_JOB_STATES = ("completed", "failed")


def parse_upload_filter(upload_id: str | None) -> str | None:
    """``GET /jobs?uploadId=``: an upload id's shape (a key segment), or absent."""
    if upload_id is not None and not valid_upload_id(upload_id):
        raise InvalidRequest("uploadId is not a valid upload id", field="uploadId")
    return upload_id


# A job name's shape (processors, system and requested jobs are named so): anything else is a
# 400, not a query.
_JOB_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")


def parse_name_filter(name: str | None) -> str | None:
    """``GET /jobs?name=``: a job name's shape, or absent (e.g. ``export``: the jobs a user
    asked for with ``POST /jobs``, which the web page lists on their own)."""
    if name is not None and not _JOB_NAME.fullmatch(name):
        raise InvalidRequest("name is not a valid job name", field="name")
    return name


def arrange_pipeline(rows: Sequence[JobRow]) -> tuple[JobRow | None, list[JobRow]]:
    """An upload's jobs (oldest first) as its pipeline: the finalize job of its current object
    (the newest ``finalize`` without a parent that is not superseded; None for uploads from
    before pipelines, and while a newer version's flow is not started yet) and every other job
    as a step: the current flow's steps first, in the order they were created, then the rest
    (jobs from before pipelines, older versions' steps and finalize jobs: ``superseded``)."""
    finalizers = [
        row for row in rows if row.name == FINALIZE and row.parent_id is None and not row.superseded
    ]
    finalize = finalizers[-1] if finalizers else None
    steps = [row for row in rows if row is not finalize]
    parent = finalize.id if finalize else None
    steps.sort(key=lambda row: (parent is None or row.parent_id != parent, bool(row.superseded)))
    return finalize, steps


def pipeline_finished(upload: Upload, finalize: JobRow | None, steps: Sequence[JobRow]) -> bool:
    """Whether anything more will happen to the upload without a retry: it is in a final
    state; or it is from before pipelines and every job of its current object is completed or
    failed. An upload from before pipelines has no finalize job and no detected type (the
    enqueue path that starts flows records the type first): it stays ``queued`` for good. An
    upload with either is waited for until its final state, even while its flow is being
    recorded or rebuilt."""
    if upload.state in FINAL_STATES:
        return True
    if finalize is not None or upload.detected_type is not None or upload.state != "queued":
        return False
    current = [row for row in steps if not row.superseded]
    return bool(current) and all(row.state in FINAL_JOB_STATES for row in current)


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
        pool: AsyncConnectionPool | None = None,
    ):
        self.settings = settings
        self.queries = queries
        self.statuses = statuses
        self._s3 = s3
        self._queue = queue
        self._pool = pool  # POST /jobs only

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
        if row.state == "completed" and row.upload_id is None:
            view["links"] = _requested_links(self._s3, self.settings, owner, row.result)
        elif row.state == "completed" and row.upload_id and not row.superseded:
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

    async def page(
        self,
        owner: str,
        limit: str | None,
        cursor: str | None,
        upload_id: str | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """One page of the owner's jobs (of one upload, given ``upload_id``; of one job name,
        given ``name``), newest first, and the cursor of the next page."""
        size, after = parse_list_params(limit, cursor)
        wanted = parse_upload_filter(upload_id)
        rows, next_cursor = await self.queries.list_for_owner(
            owner, size, after, wanted, parse_name_filter(name)
        )
        return {
            "jobs": [self.answer(owner, row) for row in rows],
            "nextCursor": encode_cursor(next_cursor) if next_cursor else None,
        }

    async def request(self, owner: str, tier: str, body: Any) -> dict[str, Any]:
        """``POST /jobs``: validate, record within the limits, queue; the job's answer."""
        from offload.db.requested import record_requested_job
        from offload.db.status import JobIdentity
        from offload.jobs import job_id as make_job_id
        from offload.priorities import upload_priority
        from offload.requested_jobs import (
            REQUESTED_JOB_NAMES,
            InvalidParameters,
            export_ref,
            parse_request,
        )
        from offload.step_limits import queue_for

        try:
            name, export = parse_request(body)
        except InvalidParameters as exc:
            raise InvalidRequest(str(exc), field=exc.field) from exc
        assert self._pool is not None, "JobService needs its pool for POST /jobs"
        settings = self.settings
        ref = export_ref(settings.upload_bucket, owner, export)
        queue_name = queue_for(settings, name)
        identity = JobIdentity(make_job_id(name, ref), name, queue_name, ref)
        # A job without a priority would go ahead of every prioritised upload step: a requested
        # job waits like an upload of unknown (largest) size from the caller's tier.
        opts = settings.default_job_options() | {
            "jobId": identity.job_id,
            "priority": upload_priority(settings, None, tier),
        }
        await record_requested_job(
            self._pool,
            identity,
            int(opts["attempts"]),
            names=REQUESTED_JOB_NAMES,
            in_flight_limit=settings.requested_jobs_in_flight,
            per_hour_limit=settings.requested_jobs_per_hour,
            tier=tier,
        )
        # After the commit: if Redis fails here (503), the row is a queued job missing from
        # the queue, which the reconciler adds again from the row.
        queue = await self._queue(queue_name)
        await queue.add(name, ref.to_data(), opts)
        return self.answer(owner, await self._owned(owner, identity.job_id))

    async def pipelines(self, owner: str, uploads: Sequence[Upload]) -> dict[str, dict[str, Any]]:
        """Each upload's pipeline, by upload id (:class:`offload.uploads.PipelineReader`):
        ``finalize`` and ``steps`` as ``GET /jobs/{id}`` shows them (links included), and
        ``finished`` (:func:`pipeline_finished`). One query for all the uploads."""
        rows = await self.queries.for_uploads(owner, [upload.id for upload in uploads])
        shown = {}
        for upload in uploads:
            finalize, steps = arrange_pipeline(rows[upload.id])
            shown[upload.id] = {
                "finished": pipeline_finished(upload, finalize, steps),
                "finalize": self.answer(owner, finalize) if finalize else None,
                "steps": [self.answer(owner, row) for row in steps],
            }
        return shown

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
        ) as claim:
            if not claim.won:
                raise Conflict("job was retried meanwhile; only a failed job can be retried")
            job = await queue.getJob(job_id)
            if job is None:
                raise Conflict(_GONE)
            if job.parentKey:
                await self._retry_step(queue, job, row, claim)
            else:
                await self._retry_job(queue, job, row, claim)
        return self.answer(owner, await self._owned(owner, job_id))

    async def _retry_step(self, queue: Any, job: Any, row: JobRow, claim: RetryClaim) -> None:
        """A step of a pipeline: the step runs again, then its ``finalize``
        (``offload.flow_retry``), and the upload is ``queued`` again until the pipeline ends.
        With another step of the pipeline still failed, only this one runs: the pipeline
        stays failed until that one is retried too."""
        from offload.flow_retry import StepRetryError, retry_step

        try:
            outcome = await retry_step(queue, job)
        except StepRetryError as exc:
            raise Conflict(_GONE if exc.gone else exc.reason) from exc
        if outcome.reopened:
            parent_id = row.parent_id or job.parentKey.rpartition(":")[2]
            await claim.reopen_flow(parent_id, row.upload_id)

    async def _retry_job(self, queue: Any, job: Any, row: JobRow, claim: RetryClaim) -> None:
        """A job outside a pipeline, or a pipeline's ``finalize`` that failed by itself (its
        steps all succeeded): bullmq's own retry. A ``finalize`` failed by a step cannot run
        without that step's result: the step is what to retry."""
        if row.name == FINALIZE:
            unsuccessful = await queue.client.zcard(f"{queue.toKey(job.id)}:unsuccessful")
            if unsuccessful:
                raise Conflict(
                    "a step of this upload's pipeline failed; retry that step (the pipeline's"
                    " finalize then runs again by itself)"
                )
        try:
            await job.retry("failed")
        except TypeError as exc:  # bullmq: not in the failed set, or no such job any more
            if await queue.getJob(job.id) is None:
                raise Conflict(_GONE) from exc
            raise Conflict("job is not failed in the queue; it may still be finishing") from exc
        # A fresh stall allowance: bullmq keeps the stall count across retries, so a job
        # the stall limit failed would fail again at its next single crash. (Milliseconds
        # after the move, long before a run could stall: that takes a whole lock duration.)
        await queue.client.hdel(queue.toKey(job.id), "stc")
        if row.name == FINALIZE:
            await claim.reopen_flow(None, row.upload_id)


def _requested_links(
    s3: Callable[[], Any], settings: Settings, owner: str, result: Any
) -> list[dict[str, str]]:
    """Presigned GETs of what a requested job wrote (its result's ``*_key`` values), only
    under the caller's exports (``offload.requested_jobs``)."""
    from offload.requested_jobs import exports_prefix

    if not isinstance(result, dict):
        return []
    prefix = exports_prefix(owner)
    keys = sorted(
        (name, key)
        for name, key in result.items()
        if name.endswith("_key") and isinstance(key, str) and key.startswith(prefix)
    )
    if not keys:
        return []
    client = s3()
    return [
        {
            "name": key.rsplit("/", 1)[-1],
            "url": client.generate_presigned_url(
                "get_object",
                Params={"Bucket": settings.upload_bucket, "Key": key},
                ExpiresIn=settings.url_expiry_s,
            ),
        }
        for _, key in keys
    ]
