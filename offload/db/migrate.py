"""Versioned schema migrations: ``python -m offload.db.migrate``.

Migrations are the numbered ``.sql`` files beside this module, applied in order, each in its
own transaction together with its row in ``schema_migrations``. A session-level advisory lock
serialises concurrent runners (two tasks of a deploy starting at once), and applied versions
are skipped, so running it twice, or from two processes at once, is safe.

With ``role_default`` the schema also becomes the connecting role's default search_path in
this database (``ALTER ROLE CURRENT_USER IN DATABASE ... SET search_path``), for connections
that cannot pin it with a startup option: through RDS Proxy (``offload.db.pool``).

With ``role_prefix`` the migrations also create (or update) the components' own login roles
and their grants (``offload.db.roles``): the runtime never logs in as the schema's owner.
"""

from __future__ import annotations

import logging
import re
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from offload.db import check_schema_name
from offload.db.credentials import resolve_database_url
from offload.db.roles import ensure_roles
from offload.settings import Settings

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.iterdir()):
        match = _FILE_NAME.match(path.name)
        if match:
            migrations.append(Migration(int(match[1]), match[2], path))
        elif path.suffix == ".sql":
            raise ValueError(f"migration file {path.name} must be named NNNN_name.sql")
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions in {directory}")
    return migrations


def migrate(
    database_url: str,
    schema: str,
    directory: Path = MIGRATIONS_DIR,
    *,
    role_default: bool = False,
    role_prefix: str | None = None,
) -> list[int]:
    """Apply pending migrations; returns the versions this call applied."""
    check_schema_name(schema)  # before the name reaches SQL
    lock_key = zlib.crc32(f"offload-migrate:{schema}".encode())
    applied: list[int] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (lock_key,))
        try:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for migration in discover(directory):
                if migration.version in done:
                    continue
                with conn.transaction():
                    conn.execute(migration.path.read_text(encoding="utf-8"))
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
                log.info("applied migration %04d_%s", migration.version, migration.name)
                applied.append(migration.version)
            if role_default:
                _set_role_search_path(conn, schema)
            if role_prefix:
                ensure_roles(conn, schema, role_prefix)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key,))
    return applied


def _set_role_search_path(conn: psycopg.Connection, schema: str) -> None:
    """New sessions of this role in this database start with ``schema`` as their search_path
    (sessions already open keep theirs). Idempotent; any role may set its own defaults."""
    row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None
    conn.execute(
        sql.SQL("ALTER ROLE CURRENT_USER IN DATABASE {} SET search_path = {}").format(
            sql.Identifier(row[0]), sql.Identifier(schema)
        )
    )
    log.info("schema %s is now the default search_path of this role in %s", schema, row[0])


def main(argv: list[str] | None = None) -> int:
    from offload.logs import configure_logging
    from offload.usage import parse_env_only_args

    parse_env_only_args(
        "python -m offload.db.migrate",
        "Apply the schema migrations (offload/db/migrations/*.sql) to the database of "
        "DATABASE_URL, in schema OFFLOAD_DB_SCHEMA, and (with OFFLOAD_DB_ROLE_PREFIX) the "
        "components' database roles and grants. Applied versions are skipped: running it "
        "twice, or from two processes at once, is safe.",
        argv,
    )
    configure_logging()
    settings = Settings.from_env()
    applied = migrate(
        resolve_database_url(settings),
        settings.database_schema,
        role_default=settings.database_schema_from_role,
        role_prefix=settings.database_role_prefix,
    )
    log.info(
        "schema %s is up to date (%d migration(s) applied now)",
        settings.database_schema,
        len(applied),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
