"""Status per upload (issue 14): ``GET /uploads`` (the caller's uploads, newest first, cursor,
state filter), ``GET /uploads/{id}`` with its pipeline (finalize and steps: state, progress,
attempts, error), the final state and the link to result.json, and ``GET /jobs?uploadId=``.

The pipeline rows are written into PostgreSQL as the flows write them
(tests/support/pipeline_rows.py); the handler reads them as the ``api`` role, as deployed."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from offload.uploads import UPLOAD_STATES
from tests.support import pipeline_rows as rows
from tests.support.apigw import call, configure

GOOD = {"filename": "photo.jpg", "size": 1234, "contentType": "image/jpeg"}


@pytest.fixture
def db(lambda_env, settings) -> rows.Db:
    return rows.Db(settings.database_url, settings.database_schema)


def new_upload(sub: str = "user-a", filename: str = "photo.jpg") -> str:
    created = call("POST", "/uploads", sub=sub, body=GOOD | {"filename": filename})
    assert created.status == 201, created.body
    return created.body["id"]


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.read()


def test_a_processed_upload_shows_its_steps_and_links_its_result(db, s3, bucket):
    upload_id = new_upload()
    key = rows.processed_pipeline(db, upload_id, "user-a", ("inspect", "thumbnail"))
    s3.put_object(Bucket=bucket, Key=key, Body=b'{"upload": "done"}')

    view = call("GET", f"/uploads/{upload_id}")
    assert view.status == 200, view.body
    body = view.body
    assert body["state"] == "processed" and body["finishedAt"]
    assert "failedStep" not in body and "error" not in body
    assert [link["name"] for link in body["links"]] == ["result.json"]
    assert fetch(body["links"][0]["url"]) == b'{"upload": "done"}'
    assert body["outputsArchived"] is False
    pipeline = body["pipeline"]
    assert pipeline["finished"] is True
    assert pipeline["finalize"]["id"] == f"finalize-{upload_id}"
    assert pipeline["finalize"]["state"] == "completed"
    steps = pipeline["steps"]
    assert [step["name"] for step in steps] == ["inspect", "thumbnail"]
    for step in steps:
        assert (step["state"], step["progress"], step["attempts"]) == ("completed", 100, 1)
        assert step["maxAttempts"] == 3 and step["error"] is None
        assert step["uploadId"] == upload_id and step["superseded"] is False
    # What GET /jobs/{id} shows of a step is what the pipeline shows of it.
    assert call("GET", f"/jobs/{steps[0]['id']}").body == steps[0]


def test_a_failed_upload_names_the_step_and_its_reason(db, bucket):
    upload_id = new_upload()
    rows.name_object(db, upload_id)
    parent = rows.add_job(db, "finalize-x", "finalize", upload_id, state="failed", attempt=0)
    rows.add_job(db, "inspect-x", "inspect", upload_id, state="completed", parent=parent,
                 attempt=1, progress=100)  # fmt: skip
    rows.add_job(db, "thumbnail-x", "thumbnail", upload_id, state="failed", parent=parent,
                 attempt=3, max_attempts=3, progress=40,
                 error=f"object is not an image (s3://{bucket}/x)")  # fmt: skip
    rows.set_state(
        db,
        upload_id,
        "failed",
        failed_step="thumbnail",
        error=f"thumbnail: object is not an image (s3://{bucket}/x)",
        finished_at=datetime.now(UTC),
    )

    body = call("GET", f"/uploads/{upload_id}").body
    assert (body["state"], body["failedStep"]) == ("failed", "thumbnail")
    assert body["error"].startswith("thumbnail: object is not an image")
    assert bucket not in body["error"]  # redacted as every error shown
    assert body["links"] == [] and body["pipeline"]["finished"] is True
    assert body["pipeline"]["finalize"]["state"] == "failed"
    thumbnail = body["pipeline"]["steps"][1]
    assert (thumbnail["name"], thumbnail["state"]) == ("thumbnail", "failed")
    assert (thumbnail["attempts"], thumbnail["maxAttempts"], thumbnail["progress"]) == (3, 3, 40)
    assert thumbnail["error"].startswith("object is not an image") and bucket not in str(body)


def test_a_pipeline_under_way_is_not_finished(db):
    upload_id = new_upload()
    rows.name_object(db, upload_id)
    rows.set_state(db, upload_id, "queued")
    parent = rows.add_job(db, "finalize-y", "finalize", upload_id)
    rows.add_job(db, "inspect-y", "inspect", upload_id, state="completed", parent=parent,
                 attempt=1)  # fmt: skip
    rows.add_job(db, "thumbnail-y", "thumbnail", upload_id, state="retrying", parent=parent,
                 attempt=1, progress=60, error="timed out")  # fmt: skip

    body = call("GET", f"/uploads/{upload_id}").body
    assert body["state"] == "queued" and body["links"] == []
    pipeline = body["pipeline"]
    assert pipeline["finished"] is False and pipeline["finalize"]["state"] == "queued"
    retrying = pipeline["steps"][1]
    assert (retrying["state"], retrying["progress"], retrying["error"]) == (
        "retrying",
        60,
        "timed out",
    )
    # Every step done, finalize not yet run: still not finished (finalize decides).
    db.sql("UPDATE jobs SET state = 'completed', error_message = NULL WHERE id = 'thumbnail-y'")
    assert call("GET", f"/uploads/{upload_id}").body["pipeline"]["finished"] is False


def test_jobs_from_before_pipelines_show_as_steps(db):
    """An upload from before pipelines (no finalize job, no detected type) stays ``queued``:
    its jobs are its steps, and it is finished once they all are."""
    upload_id = new_upload()
    rows.name_object(db, upload_id)
    rows.set_state(db, upload_id, "queued")
    rows.add_job(db, "inspect-old", "inspect", upload_id, state="completed", attempt=1)
    rows.add_job(db, "thumbnail-old", "thumbnail", upload_id, state="active", attempt=1,
                 progress=10)  # fmt: skip

    pipeline = call("GET", f"/uploads/{upload_id}").body["pipeline"]
    assert pipeline["finalize"] is None and pipeline["finished"] is False
    assert [step["id"] for step in pipeline["steps"]] == ["inspect-old", "thumbnail-old"]
    db.sql("UPDATE jobs SET state = 'failed' WHERE id = 'thumbnail-old'")
    assert call("GET", f"/uploads/{upload_id}").body["pipeline"]["finished"] is True
    # A detected type says the enqueue path that starts flows took it: its finalize job is
    # being recorded (or rebuilt), so it is waited for until its final state.
    db.sql("UPDATE uploads SET detected_type = 'image/jpeg' WHERE id = %s", (upload_id,))
    assert call("GET", f"/uploads/{upload_id}").body["pipeline"]["finished"] is False


def test_an_older_versions_pipeline_is_shown_after_the_current_one_as_superseded(db):
    upload_id = new_upload()
    rows.name_object(db, upload_id, revision="b" * 32)
    rows.set_state(db, upload_id, "queued")
    old_parent = rows.add_job(db, "finalize-old", "finalize", upload_id, state="completed",
                              revision="a" * 32)  # fmt: skip
    rows.add_job(db, "inspect-old", "inspect", upload_id, state="completed", parent=old_parent,
                 revision="a" * 32)  # fmt: skip
    parent = rows.add_job(db, "finalize-new", "finalize", upload_id, revision="b" * 32)
    rows.add_job(db, "inspect-new", "inspect", upload_id, state="active", parent=parent,
                 revision="b" * 32)  # fmt: skip

    pipeline = call("GET", f"/uploads/{upload_id}").body["pipeline"]
    assert pipeline["finalize"]["id"] == "finalize-new"
    shown = [(step["id"], step["superseded"]) for step in pipeline["steps"]]
    assert shown == [("inspect-new", False), ("finalize-old", True), ("inspect-old", True)]


def test_a_result_key_outside_the_uploads_prefix_is_never_signed(db, monkeypatch):
    """Whatever the row names (a bug in finalize, a hand-edited row): only a key under the
    upload's own output prefix becomes a link; an archived result none at all."""
    upload_id = new_upload()
    for key in (
        "processed/user-b/other/result.json",
        f"processed/user-a/{upload_id}x/result.json",
        f"uploads/user-a/{upload_id}/photo.jpg",
    ):
        rows.set_state(db, upload_id, "processed", result_key=key)
        assert call("GET", f"/uploads/{upload_id}").body["links"] == [], key

    configure(monkeypatch, OFFLOAD_PROCESSED_ARCHIVE_AFTER_DAYS=90)
    key = f"processed/user-a/{upload_id}/result.json"
    for days, archived in ((89, False), (91, True)):
        finished = datetime.now(UTC) - timedelta(days=days)
        rows.set_state(db, upload_id, "processed", result_key=key, finished_at=finished)
        body = call("GET", f"/uploads/{upload_id}").body
        assert body["outputsArchived"] is archived
        assert [link["name"] for link in body["links"]] == ([] if archived else ["result.json"])


def walk_uploads(query: dict[str, str], sub: str = "user-a") -> list[list[dict]]:
    pages, cursor = [], None
    while True:
        page = call(
            "GET", "/uploads", sub=sub, query=query | ({"cursor": cursor} if cursor else {})
        )
        assert page.status == 200, page.body
        pages.append(page.body["uploads"])
        cursor = page.body["nextCursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50


def test_the_upload_list_is_the_callers_newest_first_with_cursor_and_state_filter(db):
    mine = [new_upload(filename=f"f{n}.jpg") for n in range(7)]
    theirs = [new_upload(sub="user-b") for _ in range(2)]
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for index, upload_id in enumerate(mine + theirs):  # ties in twos: ordered by id
        db.sql(
            "UPDATE uploads SET created_at = %s WHERE id = %s",
            (base + timedelta(seconds=index // 2), upload_id),
        )
    expected = [
        row["id"]
        for row in db.sql(
            "SELECT id FROM uploads WHERE owner = 'user-a' ORDER BY created_at DESC, id ASC"
        )
    ]
    pages = walk_uploads({"limit": "3"})
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [upload["id"] for page in pages for upload in page] == expected
    assert not {upload["id"] for page in pages for upload in page} & set(theirs)
    first = pages[0][0]
    assert first["state"] == "pending" and first["pipeline"] == {
        "finished": False,
        "finalize": None,
        "steps": [],
    }
    assert "uploadedParts" not in first and "completed" not in first  # no S3 call per row

    rows.processed_pipeline(db, mine[2], "user-a", ("inspect",))
    rows.set_state(db, mine[4], "failed", failed_step="inspect", error="bad")
    processed = walk_uploads({"state": "processed"})
    assert [[upload["id"] for upload in page] for page in processed] == [[mine[2]]]
    listed = processed[0][0]
    assert [link["name"] for link in listed["links"]] == ["result.json"]
    assert [step["name"] for step in listed["pipeline"]["steps"]] == ["inspect"]
    failed = walk_uploads({"state": "failed"})[0]
    assert [(u["id"], u["failedStep"], u["error"]) for u in failed] == [(mine[4], "inspect", "bad")]
    assert walk_uploads({"state": "processed"}, sub="user-b") == [[]]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"state": "done"}, "state"),
        ({"state": "PROCESSED"}, "state"),
        ({"state": ""}, "state"),
        ({"state": "queued\x00"}, "state"),
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
    ],
)
def test_upload_list_parameters_are_checked(lambda_env, query, field):
    answer = call("GET", "/uploads", query=query)
    assert answer.status == 400 and answer.body["field"] == field, answer.body


def test_jobs_of_one_upload(db):
    upload_id, other = new_upload(), new_upload()
    for n in range(5):
        rows.add_job(db, f"step{n}-{upload_id}", f"step{n}", upload_id)
    rows.add_job(db, f"inspect-{other}", "inspect", other)
    theirs = new_upload(sub="user-b")
    rows.add_job(db, f"inspect-{theirs}", "inspect", theirs)

    pages, cursor = [], None
    while True:
        query = {"uploadId": upload_id, "limit": "2"} | ({"cursor": cursor} if cursor else {})
        page = call("GET", "/jobs", query=query)
        assert page.status == 200, page.body
        pages.append([job["id"] for job in page.body["jobs"]])
        if not (cursor := page.body["nextCursor"]):
            break
    assert [len(page) for page in pages] == [2, 2, 1]
    assert sorted(job for page in pages for job in page) == sorted(
        f"step{n}-{upload_id}" for n in range(5)
    )

    # Another user's upload, or none at all: the caller has no job of it.
    for absent in (theirs, "NoSuchUpload12345678"):
        page = call("GET", "/jobs", query={"uploadId": absent})
        assert page.status == 200 and page.body == {"jobs": [], "nextCursor": None}
    for bad in ("", "../x", "a/b", "x" * 300, "a\x00b", "a.b"):
        answer = call("GET", "/jobs", query={"uploadId": bad})
        assert answer.status == 400 and answer.body["field"] == "uploadId", (bad, answer.body)


def test_the_known_states_are_the_databases(db):
    """``state=`` is checked against UPLOAD_STATES: the same set the table's CHECK allows."""
    with psycopg.connect(db.url, autocommit=True) as conn:
        definition = conn.execute(
            "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c"
            " JOIN pg_namespace n ON n.oid = c.connamespace"
            " WHERE n.nspname = %s AND c.conname = 'uploads_state_check'",
            (db.schema,),
        ).fetchone()[0]
    allowed = set(definition.split("ARRAY[", 1)[1].split("]", 1)[0].replace("'", "").split(", "))
    assert {state.split("::")[0] for state in allowed} == set(UPLOAD_STATES)
