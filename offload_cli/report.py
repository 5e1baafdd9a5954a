"""What the CLI prints: human-readable lines by default, one JSON document with ``--json``."""

from __future__ import annotations

from typing import Any

from offload_cli.follow import Followed
from offload_cli.progress import human_bytes
from offload_cli.uploader import UploadOutcome

JOB_FIELDS = (
    "id",
    "name",
    "uploadId",
    "state",
    "progress",
    "attempts",
    "maxAttempts",
    "result",
    "error",
    "createdAt",
    "finishedAt",
    "links",
    "outputsArchived",
)


def job_json(job: dict[str, Any]) -> dict[str, Any]:
    return {name: job.get(name) for name in JOB_FIELDS if name in job}


def upload_json(
    upload: dict[str, Any], followed: Followed | None = None, outcome: UploadOutcome | None = None
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "uploadId": upload.get("id"),
        "key": upload.get("key"),
        "filename": upload.get("filename"),
        "type": upload.get("type"),
        "state": (followed.upload if followed else upload).get("state"),
        "size": upload.get("size"),
        "contentType": upload.get("contentType"),
    }
    if followed and followed.upload.get("error"):
        doc["error"] = followed.upload["error"]
    if upload.get("partCount"):
        doc["partSize"], doc["partCount"] = upload.get("partSize"), upload.get("partCount")
    if outcome:
        doc["file"] = outcome.file
        doc["resumedParts"] = outcome.resumed_parts
        doc["sentParts"] = outcome.sent_parts
        doc["sentBytes"] = outcome.sent_bytes
        doc["seconds"] = round(outcome.seconds, 3)
    if followed is not None:
        doc["jobs"] = [job_json(job) for job in followed.jobs]
    return doc


def job_line(job: dict[str, Any]) -> str:
    state = job.get("state", "?")
    detail = ""
    if state == "completed" and isinstance(job.get("result"), dict):
        result = job["result"]
        names = ("sha256", "size", "content_type", "contentType")
        shown = [f"{k}={result[k]}" for k in names if k in result]
        if "width" in result and "height" in result:
            shown.append(f"{result['width']}x{result['height']}")
        detail = " ".join(shown)
    elif state == "failed":
        detail = f"{job.get('error') or 'failed'} (attempt {job.get('attempts')})"
    elif state in ("active", "retrying"):
        detail = f"{job.get('progress') or 0}%"
    return f"  {job.get('name', '?'):<10} {state:<9} {detail}".rstrip()


def upload_text(
    upload: dict[str, Any], followed: Followed | None = None, outcome: UploadOutcome | None = None
) -> str:
    state = (followed.upload if followed else upload).get("state")
    head = f"{outcome.file if outcome else upload.get('filename')}: upload {upload.get('id')}"
    head += f" ({upload.get('type')}, {human_bytes(upload.get('size') or 0)}) {state}"
    lines = [head]
    if outcome and outcome.seconds > 0 and outcome.sent_bytes:
        rate = outcome.sent_bytes / outcome.seconds / (1 << 20)
        resumed = f", {outcome.resumed_parts} part(s) resumed" if outcome.resumed_parts else ""
        lines.append(
            f"  sent {human_bytes(outcome.sent_bytes)} in {outcome.seconds:.1f} s "
            f"({rate:.1f} MiB/s{resumed})"
        )
    lines.append(f"  key {upload.get('key')}")
    if followed and followed.upload.get("error"):
        lines.append(f"  rejected: {followed.upload['error']}")
    for job in followed.jobs if followed else []:
        lines.append(job_line(job))
        for link in job.get("links") or []:
            lines.append(f"    {link.get('name')}: {link.get('url')}")
        if job.get("outputsArchived"):
            lines.append("    outputs archived: ask an administrator to restore them")
    return "\n".join(lines)


JOBS_COLUMNS = (
    ("JOB", "id"),
    ("NAME", "name"),
    ("STATE", "state"),
    ("UPLOAD", "uploadId"),
    ("CREATED", "createdAt"),
)


def table(rows: list[tuple[str, ...]]) -> str:
    """Columns as wide as their widest cell (the header row included), two spaces apart: a job
    id is as long as its job's name makes it (``thumbnail-`` + 40 hex digits), and a job added
    from outside may have any id up to 200 characters, so no fixed width fits."""
    widths = [max(len(cell) for cell in column) for column in zip(*rows, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def jobs_table(jobs: list[dict[str, Any]]) -> str:
    header = tuple(title for title, _ in JOBS_COLUMNS)
    rows = [tuple(str(job.get(name) or "") for _, name in JOBS_COLUMNS) for job in jobs]
    return table([header, *rows])
