"""The event an upload's final state publishes on EventBridge: what a deployer subscribes to.

``source`` is ``offload``; ``detail-type`` is ``Upload Processed`` or ``Upload Failed``; the
detail names the upload, its owner (the Cognito ``sub``), the flow's job ids and either the
result document's location or the failing step and its public reason. Sent to the bus named by
``OFFLOAD_EVENT_BUS`` (the account's default bus when unset).

Delivery is at least once, after the state: PostgreSQL holds the final state first, then the
event is put; a put that fails (after boto3's own retries) fails the worker's attempt, and the
retry writes the same state again (a no-op) and puts the event again. A subscriber may see an
event twice, never an event for a state that was not stored. Each event carries the upload id
and state, which is what a subscriber deduplicates on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from offload.user_errors import aws_error_code

SOURCE = "offload"
PROCESSED = "Upload Processed"
FAILED = "Upload Failed"


class EventNotPublished(RuntimeError):
    """EventBridge refused the event (a failed entry); the caller retries."""


@dataclass(frozen=True)
class UploadEvent:
    """An upload's final state, as published."""

    upload_id: str
    owner: str
    state: str  # "processed" or "failed"
    job_ids: Sequence[str]
    finished_at: datetime | None = None
    result_bucket: str | None = None
    result_key: str | None = None
    failed_step: str | None = None
    reason: str | None = None

    @property
    def detail_type(self) -> str:
        return PROCESSED if self.state == "processed" else FAILED

    def detail(self) -> dict[str, Any]:
        detail: dict[str, Any] = {
            "uploadId": self.upload_id,
            "owner": self.owner,
            "state": self.state,
            "jobIds": list(self.job_ids),
            "finishedAt": self.finished_at.isoformat() if self.finished_at else None,
        }
        if self.state == "processed":
            detail["result"] = {"bucket": self.result_bucket, "key": self.result_key}
        else:
            detail["failedStep"] = self.failed_step
            detail["reason"] = self.reason
        return detail

    def entry(self, bus_name: str | None) -> dict[str, Any]:
        """The ``PutEvents`` entry (no bus name: the account's default bus)."""
        entry: dict[str, Any] = {
            "Source": SOURCE,
            "DetailType": self.detail_type,
            "Detail": json.dumps(self.detail(), sort_keys=True),
            "Resources": [],
        }
        if bus_name:
            entry["EventBusName"] = bus_name
        return entry


def publish(events_client: Any, event: UploadEvent, bus_name: str | None) -> str:
    """Put ``event`` (blocking: run it in a thread); returns its EventBridge id. Raises
    EventNotPublished for an entry EventBridge refused (PutEvents answers 200 with a failed
    entry rather than an error) and for a request that failed once boto3's retries are spent
    (the message, which the finalize job's user reads, names the error code only)."""
    try:
        response = events_client.put_events(Entries=[event.entry(bus_name)])
    except Exception as exc:  # botocore's, once its retries are spent: named for what failed
        code = aws_error_code(exc) or exc.__class__.__name__
        raise EventNotPublished(f"{event.detail_type} event not published ({code})") from exc
    (result,) = response["Entries"]
    if response.get("FailedEntryCount") or "EventId" not in result:
        raise EventNotPublished(
            f"{event.detail_type} event refused ({result.get('ErrorCode')}):"
            f" {result.get('ErrorMessage')}"
        )
    return str(result["EventId"])
