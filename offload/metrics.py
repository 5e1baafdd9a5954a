"""CloudWatch metrics in Embedded Metric Format (EMF): JSON lines on stdout.

The CloudWatch agent-less path for both Lambda and ECS (awslogs driver): CloudWatch extracts the
metrics from the log line, so publishing costs no API call and no credentials on the hot path.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from typing import TextIO

UNITS = {"Count", "Milliseconds", "Seconds", "Bytes", "None"}


def emf_line(
    namespace: str,
    metrics: Mapping[str, tuple[float, str]],
    dimensions: Mapping[str, str],
    properties: Mapping[str, object] | None = None,
    timestamp_ms: int | None = None,
) -> str:
    """One EMF document: ``metrics`` maps name -> (value, unit); stamped now, or at
    ``timestamp_ms`` (CloudWatch files the values under that time's period)."""
    for name, (_, unit) in metrics.items():
        if unit not in UNITS:
            raise ValueError(f"metric {name}: unit {unit!r} not one of {sorted(UNITS)}")
    document: dict[str, object] = {
        "_aws": {
            "Timestamp": int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [list(dimensions)],
                    "Metrics": [
                        {"Name": name, "Unit": unit} for name, (_, unit) in metrics.items()
                    ],
                }
            ],
        },
        **dimensions,
        **{name: value for name, (value, _) in metrics.items()},
    }
    if properties:
        document.update({k: v for k, v in properties.items() if k not in document})
    return json.dumps(document, separators=(",", ":"), default=str)


class MetricsEmitter:
    def __init__(self, namespace: str, dimensions: Mapping[str, str], stream: TextIO | None = None):
        self.namespace = namespace
        self.dimensions = dict(dimensions)
        self.stream = stream

    def emit(
        self,
        metrics: Mapping[str, tuple[float, str]],
        properties: Mapping[str, object] | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        stream = self.stream or sys.stdout
        line = emf_line(self.namespace, metrics, self.dimensions, properties, timestamp_ms)
        stream.write(line + "\n")
        stream.flush()
