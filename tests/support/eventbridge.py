"""Observing EventBridge in moto: a bus of the test's own, a rule sending everything from
``offload`` to an SQS queue, and the events read back from that queue."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import boto3

from tests.support.servers import unique_name

REGION = "us-east-1"


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
    ``offload`` event to a new queue."""
    events = boto3.client("events", endpoint_url=endpoint, region_name=REGION)
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name=REGION)
    bus = bus or unique_name("bus").replace("_", "-")
    events.create_event_bus(Name=bus)
    url = sqs.create_queue(QueueName=unique_name("events"))["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    events.put_rule(
        Name="offload-uploads",
        EventBusName=bus,
        EventPattern=json.dumps({"source": ["offload"]}),
        State="ENABLED",
    )
    events.put_targets(
        Rule="offload-uploads", EventBusName=bus, Targets=[{"Id": "queue", "Arn": arn}]
    )
    return Subscription(bus, url, endpoint)
