"""The components' own PostgreSQL roles (offload.db.roles), on the real server: what each may
and may not do, and how the migrations make them (idempotent, concurrent, IAM membership).

The components' real code paths run as these roles in their own test modules: the API's,
enqueue's and reconciler's handler tests log in as their role (tests/conftest.py,
LAMBDA_ROLE_BY_MODULE), every in-process worker as the worker's (harness.running_worker).
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.conninfo import make_conninfo

from offload.db import roles
from offload.db.migrate import migrate
from offload.db.roles import drop_roles, ensure_roles, role_name, role_names
from tests.support.servers import role_url, unique_name

# What no runtime role may do to the schema its migrator owns (each statement on its own).
DESTRUCTIVE = (
    "DROP TABLE jobs",
    "DROP TABLE uploads",
    "DROP SCHEMA {schema} CASCADE",
    "TRUNCATE jobs",
    "DELETE FROM jobs",
    "DELETE FROM uploads",
    "DELETE FROM job_events",
    "UPDATE job_events SET message = 'x'",
    "ALTER TABLE jobs ADD COLUMN x int",
    "CREATE TABLE extra (id int)",
    "SELECT * FROM schema_migrations",
    "INSERT INTO schema_migrations VALUES (9999, 'x')",
)


def _denied(url: str, statement: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            conn.execute(statement)
        except (errors.InsufficientPrivilege, errors.DependentObjectsStillExist):
            return True
        return False


def _search_path(url: str) -> str:
    with psycopg.connect(url) as conn:  # no startup options: as through RDS Proxy
        return conn.execute("SHOW search_path").fetchone()[0]


# What the maintenance role's retention job does (offload.db.retention): its one exception.
MAINTENANCE_DELETES = ("DELETE FROM jobs", "DELETE FROM uploads")


@pytest.mark.parametrize("component", roles.COMPONENTS)
def test_no_role_can_drop_truncate_delete_or_alter(database_url, pg_schema, component):
    url = role_url(database_url, pg_schema, component)
    allowed = [
        statement
        for statement in DESTRUCTIVE
        if not _denied(url, statement.format(schema=pg_schema))
    ]
    assert allowed == (list(MAINTENANCE_DELETES) if component == "maintenance" else [])


def test_the_maintenance_role_only_reads_and_deletes(database_url, pg_schema):
    url = role_url(database_url, pg_schema, "maintenance")
    assert not _denied(url, "SELECT id, state, finished_at, updated_at FROM uploads")
    assert not _denied(url, "SELECT id, queue, state, upload_id FROM jobs")
    for statement in (
        "UPDATE uploads SET error = NULL",
        "UPDATE jobs SET progress = NULL",
        "INSERT INTO uploads (id, owner, bucket, key, filename) VALUES ('u', 'o', 'b', 'k', 'f')",
        "INSERT INTO job_events (job_id, attempt, state) VALUES ('j', 1, 'x')",
    ):
        assert _denied(url, statement), statement


def test_each_role_reaches_only_the_tables_it_needs(database_url, pg_schema):
    def can(component: str, statement: str) -> bool:
        return not _denied(role_url(database_url, pg_schema, component), statement)

    # The worker runs hostile input: of the uploads, only the final-state columns it writes
    # and those its writes match on (offload.db.upload_outcomes), nothing else.
    assert can("worker", "SELECT id, owner, state, version_id, etag, finished_at FROM uploads")
    assert can(
        "worker",
        "UPDATE uploads SET state = state, result_key = NULL, failed_step = NULL, error = NULL,"
        " finished_at = NULL, updated_at = now() WHERE id = 'none'",
    )
    for column in ("key", "filename", "content_type", "size_actual", "detected_type", "bucket"):
        assert not can("worker", f"SELECT {column} FROM uploads")
    for change in ("key = 'k'", "owner = 'o'", "etag = 'e'", "version_id = 'v'", "bucket = 'b'"):
        assert not can("worker", f"UPDATE uploads SET {change} WHERE id = 'none'")
    assert not can("worker", "SELECT * FROM uploads")
    # Only the API creates uploads; only writers of job rows insert them.
    assert can("api", "SELECT id FROM uploads")
    for component in ("enqueue", "worker", "reconciler"):
        assert not can(
            component,
            "INSERT INTO uploads (id, owner, bucket, key, filename)"
            " VALUES ('u', 'o', 'b', 'k', 'f')",
        )
    # The API inserts only the jobs users ask for (POST /jobs, offload.db.requested).
    assert can(
        "api",
        "INSERT INTO jobs (id, name, queue, bucket, key, state)"
        " VALUES ('j', 'n', 'q', 'b', 'k', 'queued')",
    )
    assert not can("enqueue", "UPDATE jobs SET progress = NULL")
    # Events are append-only, and nobody reads them at run time.
    for component in roles.COMPONENTS:
        assert not can(component, "SELECT * FROM job_events")


@pytest.mark.parametrize("component", roles.COMPONENTS)
def test_each_role_finds_the_schema_without_startup_options(database_url, pg_schema, component):
    assert _search_path(role_url(database_url, pg_schema, component)) == pg_schema


def test_roles_are_named_after_the_prefix_and_checked():
    assert role_names("offload") == {
        "api": "offload_api",
        "enqueue": "offload_enqueue",
        "worker": "offload_worker",
        "reconciler": "offload_reconciler",
        "maintenance": "offload_maintenance",
    }
    for bad in ("Offload", "off-load", "x" * (roles.MAX_PREFIX + 1), ""):
        with pytest.raises(ValueError, match="role prefix"):
            role_name(bad, "api")
    with pytest.raises(ValueError, match="unknown component"):
        role_name("offload", "admin")


@pytest.fixture
def fresh(database_url):
    """(schema, prefix) made by the test itself; schema and roles dropped afterwards."""
    schema, prefix = unique_name("s"), unique_name("r")
    yield schema, prefix
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        drop_roles(conn, [*role_names(prefix).values(), f"{prefix}_iam"])


def test_migrating_again_restores_the_grants_and_revokes_extra_ones(database_url, fresh):
    schema, prefix = fresh
    migrate(database_url, schema, role_prefix=prefix)
    api = make_conninfo(database_url, user=role_name(prefix, "api"))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        conn.execute(f"GRANT DELETE ON jobs TO {prefix}_api")
        conn.execute(f"GRANT CREATE ON SCHEMA {schema} TO {prefix}_api")
        conn.execute(f"REVOKE INSERT ON uploads FROM {prefix}_api")
    assert not _denied(api, "DELETE FROM jobs")

    assert migrate(database_url, schema, role_prefix=prefix) == []  # no migration, same roles
    assert _denied(api, "DELETE FROM jobs")
    assert _denied(api, "CREATE TABLE extra (id int)")
    assert not _denied(
        api,
        "INSERT INTO uploads (id, owner, bucket, key, filename) VALUES ('u', 'o', 'b', 'k', 'f')",
    )


def test_migrations_without_a_prefix_make_no_roles(database_url, fresh):
    schema, prefix = fresh
    migrate(database_url, schema)
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE %s", (f"{prefix}%",)
        ).fetchone()[0]
    assert found == 0


def test_a_role_created_concurrently_is_not_an_error(database_url, fresh):
    """Two migrations that both find the role missing: the second CREATE ROLE waits for the
    first's transaction, then fails on pg_authid's unique index. It must be taken as done."""
    _, prefix = fresh
    name = role_name(prefix, "api")
    outcome: list[BaseException | None] = []
    with psycopg.connect(database_url) as first:  # a transaction, held open
        first.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))

        def second() -> None:
            try:
                with psycopg.connect(database_url, autocommit=True) as conn:
                    roles._create_role(conn, name)
                outcome.append(None)
            except BaseException as exc:  # reported below
                outcome.append(exc)

        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.5)  # the second is now blocked on the first's uncommitted role
        assert thread.is_alive()
        first.commit()
        thread.join(10)
    assert outcome == [None]


def test_concurrent_migrations_of_one_schema_give_one_set_of_roles(database_url, fresh):
    schema, prefix = fresh
    failures: list[BaseException] = []

    def run() -> None:
        try:
            migrate(database_url, schema, role_prefix=prefix)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert failures == []
    url = make_conninfo(database_url, user=role_name(prefix, "worker"))
    assert _search_path(url) == schema


def test_roles_join_the_iam_role_only_where_it_exists(database_url, fresh):
    """On RDS the roles log in with IAM tokens once members of rds_iam; a server without that
    role (local PostgreSQL) still migrates. A stand-in of the test's own plays rds_iam."""
    schema, prefix = fresh
    iam = f"{prefix}_iam"
    migrate(database_url, schema)
    with psycopg.connect(database_url, autocommit=True) as conn:
        ensure_roles(conn, schema, prefix, iam_role=iam)  # no such role: skipped
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(iam)))
        ensure_roles(conn, schema, prefix, iam_role=iam)
        members = {
            row[0]
            for row in conn.execute(
                "SELECT m.rolname FROM pg_auth_members a"
                " JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member"
                " WHERE r.rolname = %s",
                (iam,),
            )
        }
    assert members == set(role_names(prefix).values())
