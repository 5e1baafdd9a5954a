"""Schema migrations: one command, safe twice, safe from two processes at once."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

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
