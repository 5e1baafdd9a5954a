"""EventBridge schedules: invokes a function with a "Scheduled Event" every interval (the
first run one interval after start, as a ``rate()`` rule does)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from offload_local.aws_resources import REGION

log = logging.getLogger("offload_local.scheduler")


def scheduled_event(rule_name: str) -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": REGION,
        "resources": [f"arn:aws:events:{REGION}:123456789012:rule/{rule_name}"],
        "detail": {},
    }


class Schedule:
    def __init__(self, name: str, every_s: float, invoke: Callable[[dict[str, Any]], Any]):
        self.name = name
        self.every_s = every_s
        self._invoke = invoke
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"schedule-{name}", daemon=True)
        self.runs = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(60)

    def _run(self) -> None:
        while not self._stopping.wait(self.every_s):
            try:
                self._invoke(scheduled_event(self.name))
            except Exception as exc:
                log.error("scheduled %s failed: %s", self.name, exc)
            self.runs += 1
