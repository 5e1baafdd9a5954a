"""Following an upload to its jobs' end: ``GET /uploads/{id}`` until S3's event has been
processed (``queued``, or ``rejected``), then ``GET /jobs`` (newest first, filtered by
``uploadId``) until every job of the upload is ``completed`` or ``failed``, or the upload
itself reached the end of its pipeline (``processed`` or ``failed``)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from offload_cli.api import Api

FINAL_JOB_STATES = ("completed", "failed")
FINAL_UPLOAD_STATES = ("rejected", "aborted")
# The end of an upload's pipeline (its flow's finalize ran, or a step failed for good).
PIPELINE_END_STATES = ("processed", "failed")
# Upload states with the object in S3: past ``pending``, its jobs started or done.
PAST_PENDING_STATES = ("uploaded", "queued", *PIPELINE_END_STATES)
# States whose jobs are worth reading.
WITH_JOBS_STATES = ("queued", *PIPELINE_END_STATES)


@dataclass
class Followed:
    upload: dict[str, Any]
    jobs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        if self.upload.get("state") in FINAL_UPLOAD_STATES:
            return True
        return (
            self.upload.get("state") in WITH_JOBS_STATES
            and bool(self.jobs)
            and all(job.get("state") in FINAL_JOB_STATES for job in self.jobs)
        )

    @property
    def succeeded(self) -> bool:
        state = self.upload.get("state")
        return self.finished and (
            state == "processed"
            or (state == "queued" and all(job.get("state") == "completed" for job in self.jobs))
        )


def _when(value: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def jobs_of(api: Api, uploads: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The jobs of these uploads, read page by page from the newest until the pages are older
    than the oldest of the uploads (jobs are created after their upload)."""
    wanted = {upload["id"]: upload for upload in uploads}
    found: dict[str, list[dict[str, Any]]] = {upload_id: [] for upload_id in wanted}
    created = [_when(upload.get("createdAt")) for upload in wanted.values()]
    oldest = min((c for c in created if c), default=None)
    # Clock skew between the API's writers is bounded by a few seconds; be generous.
    stop_before = oldest - timedelta(minutes=5) if oldest else None
    for job in api.iter_jobs():
        if job.get("uploadId") in found:
            found[job["uploadId"]].append(job)
        job_created = _when(job.get("createdAt"))
        if stop_before and job_created and job_created < stop_before:
            break
    for jobs in found.values():
        jobs.sort(key=lambda job: (job.get("name", ""), job.get("id", "")))
    return found


def follow(
    api: Api,
    upload_ids: list[str],
    timeout_s: float | None,
    poll_s: float = 1.0,
) -> tuple[dict[str, Followed], bool]:
    """Poll until every upload is finished; ``(state per upload id, timed out?)``."""
    deadline = None if not timeout_s else time.monotonic() + timeout_s
    followed: dict[str, Followed] = {}
    delay = min(0.3, poll_s)
    while True:
        open_ids = [i for i in upload_ids if i not in followed or not followed[i].finished]
        for upload_id in open_ids:
            followed[upload_id] = Followed(api.get_upload(upload_id))
        queued = [
            followed[i].upload for i in open_ids if followed[i].upload["state"] in WITH_JOBS_STATES
        ]
        if queued:
            for upload_id, jobs in jobs_of(api, queued).items():
                followed[upload_id].jobs = jobs
        if all(followed[i].finished for i in upload_ids):
            return followed, False
        if deadline is not None and time.monotonic() >= deadline:
            return followed, True
        pause = delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
        time.sleep(pause)
        delay = min(poll_s * 2, delay * 1.5)  # quick at first, then every ~2 poll periods
