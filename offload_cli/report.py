"""What the CLI prints: human-readable lines by default, one JSON document with ``--json``."""

from __future__ import annotations

import json
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
    "superseded",
)


def job_json(job: dict[str, Any]) -> dict[str, Any]:
    return {name: job.get(name) for name in JOB_FIELDS if name in job}


def upload_json(
    upload: dict[str, Any],
    followed: Followed | None = None,
    outcome: UploadOutcome | None = None,
    result: Any = None,
) -> dict[str, Any]:
    """The upload as ``--json`` shows it; with ``followed``, its final state, its pipeline's
    jobs (``jobs``: the steps, then finalize) and ``result``, the content of its result.json
    (``null`` until processed)."""
    shown = followed.upload if followed else upload
    doc: dict[str, Any] = {
        "uploadId": upload.get("id"),
        "key": upload.get("key"),
        "filename": upload.get("filename"),
        "type": upload.get("type"),
        "state": shown.get("state"),
        "size": upload.get("size"),
        "contentType": upload.get("contentType"),
    }
    for name in ("failedStep", "error", "finishedAt", "resultKey"):
        if shown.get(name):
            doc[name] = shown[name]
    if upload.get("partCount"):
        doc["partSize"], doc["partCount"] = upload.get("partSize"), upload.get("partCount")
    if outcome:
        doc["file"] = outcome.file
        doc["resumedParts"] = outcome.resumed_parts
        doc["sentParts"] = outcome.sent_parts
        doc["sentBytes"] = outcome.sent_bytes
        doc["seconds"] = round(outcome.seconds, 3)
    if followed is not None:
        doc["finished"] = followed.finished
        doc["jobs"] = [job_json(job) for job in followed.jobs]
        doc["links"] = shown.get("links") or []
        doc["result"] = result
    return doc


def state_text(job: dict[str, Any]) -> str:
    """A job's state, ``(superseded)`` added for a job of an older version of its upload's
    object (its result describes bytes the upload no longer holds)."""
    state = str(job.get("state") or "?")
    return f"{state} (superseded)" if job.get("superseded") else state


def job_line(job: dict[str, Any]) -> str:
    """One step of a pipeline (or one job): name, state, what it gave or why it failed, its
    progress while it runs and its attempts."""
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
        detail = job.get("error") or ""
    elif state in ("active", "retrying"):
        detail = f"{job.get('progress') or 0}%"
        if state == "retrying" and job.get("error"):
            detail += f", last error: {job['error']}"
    attempts = f"attempt {job.get('attempts') or 0}/{job.get('maxAttempts') or '?'}"
    detail = f"{detail} ({attempts})" if detail else f"({attempts})"
    return f"  {job.get('name', '?'):<10} {state_text(job):<9} {detail}".rstrip()


def upload_text(
    upload: dict[str, Any],
    followed: Followed | None = None,
    outcome: UploadOutcome | None = None,
    result: bytes | None = None,
) -> str:
    """The upload in lines: its final state first, then the pipeline's steps and finalize
    job with their links, then the result.json it produced (as S3 holds it)."""
    shown = followed.upload if followed else upload
    state = shown.get("state")
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
    if state == "failed":
        step = shown.get("failedStep") or "a step"
        lines.append(f"  failed at {step}: {shown.get('error') or 'no reason given'}")
    elif shown.get("error"):
        lines.append(f"  {state}: {shown['error']}")
    for job in followed.jobs if followed else []:
        lines.append(job_line(job))
        for link in job.get("links") or []:
            lines.append(f"    {link.get('name')}: {link.get('url')}")
        if job.get("outputsArchived"):
            lines.append("    outputs archived: ask an administrator to restore them")
    if followed and shown.get("outputsArchived"):
        lines.append("  result archived: ask an administrator to restore it")
    if result is not None:
        lines.append("  result.json:")
        lines.extend(f"    {line}" for line in result_text(result).splitlines())
    return "\n".join(lines)


def result_json(raw: bytes) -> Any:
    """result.json's content for ``--json``: the JSON it holds, or its text if it is not
    JSON (never expected: shown rather than hidden)."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def result_text(raw: bytes) -> str:
    """result.json's content for a terminal: indented JSON, every character outside ASCII
    escaped, so nothing in it (a file's metadata a step copied) can send control sequences to
    the terminal; text that is not JSON gets its control characters replaced."""
    try:
        return json.dumps(json.loads(raw), indent=2)
    except ValueError:
        text = raw.decode("utf-8", "replace")
        return "".join(c if c.isprintable() or c == "\n" else "\ufffd" for c in text)


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


UPLOADS_HEADER = ("UPLOAD", "STATE", "STEPS", "FILE", "CREATED")


def steps_done(upload: dict[str, Any]) -> str:
    """``2/3``: the current pipeline's jobs (steps and finalize, superseded ones left out)
    that completed, of all of them; empty before any job exists."""
    jobs = Followed(upload).jobs
    current = [job for job in jobs if not job.get("superseded")]
    if not current:
        return ""
    done = sum(1 for job in current if job.get("state") == "completed")
    return f"{done}/{len(current)}"


def uploads_table(uploads: list[dict[str, Any]]) -> str:
    """One line per upload: its id, its state (failed: ``failed at <step>``), how many of its
    pipeline's jobs completed, its file name and when it was created."""
    rows = []
    for upload in uploads:
        state = str(upload.get("state") or "")
        if state == "failed" and upload.get("failedStep"):
            state += f" at {upload['failedStep']}"
        rows.append(
            (
                str(upload.get("id") or ""),
                state,
                steps_done(upload),
                str(upload.get("filename") or ""),
                str(upload.get("createdAt") or ""),
            )
        )
    return table([UPLOADS_HEADER, *rows])


def jobs_table(jobs: list[dict[str, Any]]) -> str:
    header = tuple(title for title, _ in JOBS_COLUMNS)
    rows = [
        tuple(
            state_text(job) if name == "state" else str(job.get(name) or "")
            for _, name in JOBS_COLUMNS
        )
        for job in jobs
    ]
    return table([header, *rows])
