"""The SQS event source mapping: long-polls the events queue, hands batches to the enqueue
Lambda in Lambda's SQS event format, deletes what succeeded and leaves the reported failures
(``batchItemFailures``) to come back after the visibility timeout, and on to the DLQ after
``maxReceiveCount`` receives. A function error retries the whole batch, as in AWS."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from offload_local.aws_resources import REGION

log = logging.getLogger("offload_local.sqs_poller")
DEFAULT_QUEUE_ARN = f"arn:aws:sqs:{REGION}:123456789012:offload-events"


def sqs_record(
    body: str,
    message_id: str | None = None,
    receive_count: int = 1,
    *,
    receipt_handle: str | None = None,
    queue_arn: str = DEFAULT_QUEUE_ARN,
    sent_ms: str | None = None,
) -> dict[str, Any]:
    """One record of a Lambda SQS event, as Lambda delivers it."""
    now_ms = str(int(time.time() * 1000))
    return {
        "messageId": message_id or str(uuid.uuid4()),
        "receiptHandle": receipt_handle or uuid.uuid4().hex,
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": str(receive_count),
            "SentTimestamp": sent_ms or now_ms,
            "SenderId": "AIDAEXAMPLE",
            "ApproximateFirstReceiveTimestamp": now_ms,
        },
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    }


def sqs_event(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Records": records}


def from_sqs_messages(
    messages: list[dict[str, Any]], queue_arn: str = DEFAULT_QUEUE_ARN
) -> dict[str, Any]:
    """A Lambda SQS event from messages received with boto3 (``receive_message``)."""
    return sqs_event(
        [
            sqs_record(
                message["Body"],
                message["MessageId"],
                int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1")),
                receipt_handle=message.get("ReceiptHandle"),
                queue_arn=queue_arn,
                sent_ms=message.get("Attributes", {}).get("SentTimestamp"),
            )
            for message in messages
        ]
    )


class SqsPoller:
    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        queue_arn: str,
        invoke: Callable[[dict[str, Any]], Any],
        batch_size: int = 10,
        wait_s: int = 1,
    ):
        self._sqs = sqs
        self._url = queue_url
        self._arn = queue_arn
        self._invoke = invoke
        self._batch_size = batch_size
        self._wait_s = wait_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqs-poller", daemon=True)
        self.batches = 0  # handed to the function, for tests and the status line

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(self._wait_s + 35)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.poll_once()
            except Exception:
                log.exception("polling %s failed; trying again", self._url)
                self._stopping.wait(1)

    def poll_once(self) -> int:
        """One receive + invoke; returns the number of messages received."""
        messages = self._sqs.receive_message(
            QueueUrl=self._url,
            MaxNumberOfMessages=self._batch_size,
            WaitTimeSeconds=self._wait_s,
            AttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return 0
        self.batches += 1
        try:
            answer = self._invoke(from_sqs_messages(messages, self._arn)) or {}
        except Exception as exc:
            log.error("enqueue function failed on a batch of %d: %s", len(messages), exc)
            return len(messages)  # nothing deleted: the whole batch comes back
        failed = {item["itemIdentifier"] for item in answer.get("batchItemFailures", [])}
        done = [m for m in messages if m["MessageId"] not in failed]
        if failed:
            log.warning("%d of %d records failed; SQS redelivers them", len(failed), len(messages))
        if done:
            self._sqs.delete_message_batch(
                QueueUrl=self._url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)
                ],
            )
        return len(messages)
