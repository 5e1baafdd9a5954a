"""Schema migrations: one command, safe twice, safe from two processes at once."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from offload.db.migrate import discover, migrate
from tests.support.harness import REPO_ROOT
from tests.support.servers import unique_name


@pytest.fixture
def fresh_schema(database_url):
    schema = unique_name("mig")
    yield schema
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _tables(database_url: str, schema: str) -> set[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
    return {row[0] for row in rows}


def test_migrations_apply_once(database_url, fresh_schema):
    versions = [m.version for m in discover()]
    assert migrate(database_url, fresh_schema) == versions
    assert migrate(database_url, fresh_schema) == []
    assert {"uploads", "jobs", "job_events", "schema_migrations"} <= _tables(
        database_url, fresh_schema
    )


def test_concurrent_runners_apply_each_migration_once(database_url, fresh_schema):
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: migrate(database_url, fresh_schema), range(4)))
    applied = sorted(v for result in results for v in result)
    assert applied == [m.version for m in discover()]


def test_command_line_entry_point(database_url, fresh_schema):
    env = {"DATABASE_URL": database_url, "OFFLOAD_DB_SCHEMA": fresh_schema, "PATH": "/usr/bin"}
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-m", "offload.db.migrate"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout and database_url not in done.stdout


def test_badly_named_migration_is_refused(tmp_path: Path):
    (tmp_path / "1_oops.sql").write_text("SELECT 1")
    with pytest.raises(ValueError, match=r"NNNN_name\.sql"):
        discover(tmp_path)


def test_schema_name_is_validated(database_url):
    with pytest.raises(ValueError, match="schema name"):
        migrate(database_url, 'x"; DROP TABLE jobs; --')


# --- 0002: uploads.part_size ------------------------------------------------------------------

PART_SIZE_MIGRATION = 2


def _up_to(directory: Path, version: int) -> Path:
    """A migrations directory holding this repository's migrations up to ``version``."""
    for migration in discover():
        if migration.version <= version:
            (directory / migration.path.name).write_text(migration.path.read_text())
    return directory


def _connect(database_url: str, schema: str) -> psycopg.Connection:
    return psycopg.connect(database_url, autocommit=True, options=f"-c search_path={schema}")


def _insert_upload(conn: psycopg.Connection, upload_id: str, **columns: object) -> None:
    row = {"id": upload_id, "owner": "o", "bucket": "b", "key": f"uploads/o/{upload_id}/f"}
    row |= {"filename": "f", "size_announced": 100, "multipart_upload_id": "mpu", **columns}
    conn.execute(
        sql.SQL("INSERT INTO uploads ({}) VALUES ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, row)),
            sql.SQL(", ").join(sql.Placeholder() * len(row)),
        ),
        list(row.values()),
    )


def test_part_size_migration_on_a_database_with_uploads_in_flight(
    database_url, fresh_schema, tmp_path
):
    """0002 onto a schema at 0001 holding an upload (as a deploy finds it), from four runners
    at once: applied once, the old row keeps no part size, the column takes the new ones."""
    assert migrate(database_url, fresh_schema, _up_to(tmp_path, 1)) == [1]
    with _connect(database_url, fresh_schema) as conn:
        _insert_upload(conn, "before")
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: migrate(database_url, fresh_schema), range(4)))
    later = [m.version for m in discover() if m.version >= PART_SIZE_MIGRATION]
    assert sorted(v for result in results for v in result) == later
    assert migrate(database_url, fresh_schema) == []  # and again: nothing to do

    with _connect(database_url, fresh_schema) as conn:
        assert conn.execute("SELECT part_size FROM uploads WHERE id = 'before'").fetchone() == (
            None,
        )
        versions = conn.execute("SELECT version, name FROM schema_migrations ORDER BY 1")
        assert versions.fetchall()[:2] == [(1, "uploads_and_jobs"), (2, "upload_part_size")]
        _insert_upload(conn, "mib16", part_size=16 << 20)
        _insert_upload(conn, "gib5", part_size=5 << 30)
        for bad in (4 << 20, (5 << 20) + 1, (5 << 30) + (1 << 20)):
            with pytest.raises(psycopg.errors.CheckViolation, match="uploads_part_size_check"):
                _insert_upload(conn, f"bad-{bad}", part_size=bad)
        rows = conn.execute("SELECT id, part_size FROM uploads ORDER BY id").fetchall()
    assert rows == [("before", None), ("gib5", 5 << 30), ("mib16", 16 << 20)]


def test_part_size_migration_sql_can_run_twice(database_url, fresh_schema):
    """The file itself is idempotent too (a column added by hand, a half-known state): its
    second run changes nothing and fails nothing."""
    migrate(database_url, fresh_schema)
    sql_text = next(m for m in discover() if m.version == PART_SIZE_MIGRATION).path.read_text()
    with _connect(database_url, fresh_schema) as conn:
        conn.execute(sql_text)
        conn.execute(sql_text)
        checks = conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'uploads'::regclass"
            " AND conname LIKE 'uploads_part_size%'"
        ).fetchone()
        column = conn.execute(
            "SELECT data_type, is_nullable FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = 'uploads' AND column_name = 'part_size'",
            (fresh_schema,),
        ).fetchall()
    assert checks == (1,)
    assert column == [("bigint", "YES")]


# --- 0003: uploads.part_urls_expire_at --------------------------------------------------------

PART_URLS_EXPIRY_MIGRATION = 3


def test_part_urls_expiry_migration_leaves_uploads_in_flight_without_one(
    database_url, fresh_schema, tmp_path
):
    """0003 onto a schema at 0002 holding a pending multipart upload: its last signing is
    unknown, so it gets no expiry (NULL: the reconciler leaves it to the lifecycle rule); the
    file runs twice without error."""
    assert migrate(database_url, fresh_schema, _up_to(tmp_path, 2)) == [1, 2]
    with _connect(database_url, fresh_schema) as conn:
        _insert_upload(conn, "before", part_size=16 << 20)
    assert PART_URLS_EXPIRY_MIGRATION in migrate(database_url, fresh_schema)
    sql_text = next(
        m for m in discover() if m.version == PART_URLS_EXPIRY_MIGRATION
    ).path.read_text()
    with _connect(database_url, fresh_schema) as conn:
        conn.execute(sql_text)  # again: nothing to do, nothing fails
        row = conn.execute(
            "SELECT state, part_urls_expire_at FROM uploads WHERE id = 'before'"
        ).fetchone()
        assert row == ("pending", None)
        _insert_upload(conn, "after", part_urls_expire_at="2030-01-01T00:00:00Z")
        column = conn.execute(
            "SELECT data_type, is_nullable FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = 'uploads'"
            " AND column_name = 'part_urls_expire_at'",
            (fresh_schema,),
        ).fetchall()
    assert column == [("timestamp with time zone", "YES")]
