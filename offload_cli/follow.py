"""Following an upload to its final state: ``GET /uploads/{id}`` until its pipeline is
``finished`` (the API decides: the upload is ``processed``, ``failed``, ``rejected`` or
``aborted``; or, for an upload from before pipelines, which stays ``queued``, every job of it
is completed or failed). The answer carries the pipeline (its steps and finalize job), so one
request per upload and poll is all it costs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from offload_cli.api import Api

FINAL_JOB_STATES = ("completed", "failed")
FINAL_UPLOAD_STATES = ("processed", "failed", "rejected", "aborted")
# Upload states with the object in S3: past ``pending``, its pipeline started or over.
PAST_PENDING_STATES = ("uploaded", "queued", "processed", "failed")


@dataclass
class Followed:
    """An upload as ``GET /uploads/{id}`` last showed it, its pipeline included."""

    upload: dict[str, Any]

    @property
    def state(self) -> str | None:
        state = self.upload.get("state")
        return state if isinstance(state, str) else None

    @property
    def pipeline(self) -> dict[str, Any]:
        pipeline = self.upload.get("pipeline")
        return pipeline if isinstance(pipeline, dict) else {}

    @property
    def steps(self) -> list[dict[str, Any]]:
        steps = self.pipeline.get("steps")
        return [step for step in steps if isinstance(step, dict)] if isinstance(steps, list) else []

    @property
    def finalize(self) -> dict[str, Any] | None:
        finalize = self.pipeline.get("finalize")
        return finalize if isinstance(finalize, dict) else None

    @property
    def jobs(self) -> list[dict[str, Any]]:
        """The steps, then the finalize job (it runs last)."""
        return self.steps + ([self.finalize] if self.finalize else [])

    @property
    def finished(self) -> bool:
        return self.state in FINAL_UPLOAD_STATES or self.pipeline.get("finished") is True

    @property
    def succeeded(self) -> bool:
        """Processed; or, for an upload from before pipelines (no finalize job), every job of
        its current object completed."""
        if self.state == "processed":
            return True
        if not self.finished or self.state != "queued" or self.finalize is not None:
            return False
        current = [step for step in self.steps if not step.get("superseded")]
        return bool(current) and all(step.get("state") == "completed" for step in current)


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
        for upload_id in upload_ids:
            if upload_id not in followed or not followed[upload_id].finished:
                followed[upload_id] = Followed(api.get_upload(upload_id))
        if all(followed[i].finished for i in upload_ids):
            return followed, False
        if deadline is not None and time.monotonic() >= deadline:
            return followed, True
        pause = delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
        time.sleep(pause)
        delay = min(poll_s * 2, delay * 1.5)  # quick at first, then every ~2 poll periods
