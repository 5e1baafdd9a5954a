"""Observing EventBridge in moto: a bus of the test's own, a rule sending everything from
``offload`` to an SQS queue, and the events read back from that queue."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import boto3

from offload_local.aws_resources import REGION, create_upload_events
from tests.support.servers import unique_name


@dataclass(frozen=True)
class Subscription:
    bus_name: str
    queue_url: str
    endpoint: str

    def events(self, count: int, timeout_s: float = 20.0) -> list[dict[str, Any]]:
        """The next ``count`` events the rule delivered (EventBridge's envelope, detail parsed)."""
        sqs = boto3.client("sqs", endpoint_url=self.endpoint, region_name=REGION)
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while len(found) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"expected {count} events, got {len(found)}: {found}")
            answer = sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            for message in answer.get("Messages", []):
                event = json.loads(message["Body"])
                if isinstance(event.get("detail"), str):
                    event["detail"] = json.loads(event["detail"])
                found.append(event)
                sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return found

    def pending(self) -> int:
        """How many more events arrived (waits a moment: delivery is asynchronous)."""
        sqs = boto3.client("sqs", endpoint_url=self.endpoint, region_name=REGION)
        answer = sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=2
        )
        return len(answer.get("Messages", []))


def subscribe(endpoint: str, bus: str | None = None) -> Subscription:
    """A new bus (named ``bus``, else a name of its own), and a rule on it that sends every
    ``offload`` event to a new queue of the same name."""
    bus = bus or unique_name("bus").replace("_", "-")
    url = create_upload_events(endpoint, bus)  # what the local stack sets up, on a bus of ours
    return Subscription(bus, url, endpoint)
