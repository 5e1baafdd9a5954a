"""Structured JSON logs, one object per line, with the job/upload/request ids as fields.

CloudWatch Logs Insights queries these fields directly. Never log secrets, presigned URLs or
file contents: pass ids, keys and sizes as ``extra`` fields instead.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback

# Fields callers may attach with ``log.info(..., extra={...})``.
CONTEXT_FIELDS = (
    "job_id",
    "job_name",
    "upload_id",
    "request_id",
    "attempt",
    "worker_id",
    "bucket",
    "key",
    "duration_ms",
    "state",
    "error",
    "counts",  # what a system job did (numbers only: fargate_worker.system_jobs)
    "stack",  # a job's whole failure (its user-facing "error" is redacted: offload.user_errors)
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["stack"] = "".join(traceback.format_exception(*record.exc_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str | None = None) -> None:
    """Route the root logger to stdout as JSON (idempotent: safe in Lambda warm starts)."""
    root = logging.getLogger()
    root.setLevel(level or os.environ.get("LOG_LEVEL", "INFO"))
    for handler in root.handlers:
        if isinstance(handler.formatter, JsonFormatter):
            return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root.handlers = [handler]
    # bullmq and botocore are chatty at INFO/DEBUG and may echo request details.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
