"""Pipeline rows written straight into PostgreSQL, as the flows write them (issue 14): an
upload's ``finalize`` job (``parent_id`` NULL), its steps (``parent_id`` = the finalize job's
id), and the upload's final state (``processed`` with ``result_key``, or ``failed`` with
``failed_step`` and ``error``). The read side (the status routes, the page, the CLI) is tested
on these rows, whoever writes them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

REVISION = "0123456789abcdef0123456789abcdef"


@dataclass(frozen=True)
class Db:
    """Where the rows go: a database URL that may write them and the schema."""

    url: str
    schema: str

    def sql(self, statement: str, params: Any = ()) -> list[dict[str, Any]]:
        with psycopg.connect(
            self.url, options=f"-c search_path={self.schema}", autocommit=True
        ) as conn:
            conn.row_factory = dict_row
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else []


def name_object(db: Db, upload_id: str, revision: str = REVISION) -> None:
    """The upload names an object of this revision (its ETag), as once its S3 event came:
    jobs of that revision are the upload's current ones, any other revision's superseded."""
    db.sql(
        "UPDATE uploads SET etag = %s, size_actual = size_announced WHERE id = %s",
        (f'"{revision}"', upload_id),
    )


def set_state(db: Db, upload_id: str, state: str, **fields: Any) -> None:
    """Move the upload to ``state`` with ``fields`` (failed_step, result_key, error,
    finished_at, ...), as the enqueue path and finalize do."""
    assignments = "".join(f", {name} = %({name})s" for name in fields)
    db.sql(
        f"UPDATE uploads SET state = %(state)s, updated_at = now(){assignments} WHERE id = %(id)s",
        {"state": state, "id": upload_id, **fields},
    )


def add_job(
    db: Db,
    job_id: str,
    name: str,
    upload_id: str,
    *,
    state: str = "queued",
    parent: str | None = None,
    attempt: int = 0,
    max_attempts: int | None = 3,
    progress: Any = None,
    result: Any = None,
    error: str | None = None,
    revision: str = REVISION,
    created_at: datetime | None = None,
) -> str:
    """A job row of the upload's owner, bucket and key (read from the upload's row)."""
    db.sql(
        "INSERT INTO jobs (id, name, queue, upload_id, owner, bucket, key, revision, state,"
        " attempt, max_attempts, progress, result, error_message, parent_id, created_at,"
        " started_at, finished_at)"
        " SELECT %(id)s, %(name)s, 'offload', u.id, u.owner, u.bucket, u.key, %(revision)s,"
        " %(state)s, %(attempt)s, %(max)s, %(progress)s, %(result)s, %(error)s, %(parent)s,"
        " COALESCE(%(created)s, clock_timestamp()),"
        " CASE WHEN %(state)s <> 'queued' THEN now() END,"
        " CASE WHEN %(state)s IN ('completed', 'failed') THEN now() END"
        " FROM uploads u WHERE u.id = %(upload)s",
        {
            "id": job_id,
            "name": name,
            "upload": upload_id,
            "revision": revision,
            "state": state,
            "attempt": attempt,
            "max": max_attempts,
            "progress": None if progress is None else Jsonb(progress),
            "result": None if result is None else Jsonb(result),
            "error": error,
            "parent": parent,
            "created": created_at,
        },
    )
    return job_id


def processed_pipeline(db: Db, upload_id: str, owner: str, steps: tuple[str, ...]) -> str:
    """A pipeline that ran to its end: every step and finalize completed, the upload
    ``processed`` with its result key. Returns the result key (the object is the caller's to
    write)."""
    name_object(db, upload_id)
    parent = add_job(
        db, f"finalize-{upload_id}", "finalize", upload_id, state="completed", attempt=1
    )
    for step in steps:
        add_job(
            db,
            f"{step}-{upload_id}",
            step,
            upload_id,
            state="completed",
            parent=parent,
            attempt=1,
            progress=100,
            result={"ok": True},
        )
    key = f"processed/{owner}/{upload_id}/result.json"
    set_state(db, upload_id, "processed", result_key=key, finished_at=datetime.now().astimezone())
    return key
