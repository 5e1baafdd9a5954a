"""What a processor gets: the job's reference, progress reporting, and S3 access to its job's
object and outputs (no more: a sandbox child holds no AWS credentials, ``s3grants.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from fargate_worker.presigned_s3 import Presign, PresignedS3
from offload.jobs import JobRef
from offload.settings import Settings

PROGRESS_MIN_INTERVAL_S = 0.25


@dataclass
class JobContext:
    job_id: str
    name: str
    attempt: int
    data: dict[str, Any]
    settings: Settings
    send_progress: Callable[[Any], None]
    # Returns the presigned URL of an S3 request (operation, boto3 parameters), or raises; in
    # a sandbox child, the worker signs it if the job may make it (s3grants.JobGrants).
    presign: Presign
    _last_progress_at: float = field(default=0.0, repr=False)

    @cached_property
    def ref(self) -> JobRef:
        return JobRef.from_data(self.data)

    def report_progress(self, progress: int | float | dict[str, Any]) -> None:
        """Percent (0-100) or a JSON object. Throttled: at most one message every 250 ms,
        except the final 100, so a tight loop cannot flood the parent or PostgreSQL."""
        now = time.monotonic()
        final = progress == 100
        if final or now - self._last_progress_at >= PROGRESS_MIN_INTERVAL_S:
            self._last_progress_at = now
            self.send_progress(progress)

    @cached_property
    def s3(self) -> PresignedS3:
        """``get_object`` of the job's object and ``put_object`` of its outputs
        (``output_key(ref.key, name)``), with boto3's parameters and response fields; any other
        object or call is refused (``S3AccessRefused``, a permanent error)."""
        return PresignedS3(self.presign)
