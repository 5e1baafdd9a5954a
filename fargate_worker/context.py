"""What a processor gets: the job's reference, progress reporting, and an S3 client."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from offload.aws import s3_client
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

    @property
    def s3(self) -> Any:
        """A boto3 S3 client, one per child process (clients are thread-safe and reusable)."""
        return s3_client(self.settings.s3_endpoint_url)
