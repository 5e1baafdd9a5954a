"""One PostgreSQL login role per component, with only the privileges its queries need.

The migrations (run as the schema's owner, the RDS master user, which may create roles) make
them and their grants; no runtime component logs in as the owner. What each role may do is
read off the component's SQL:

* ``api`` (lambdas/api.py: offload.db.uploads, job_queries, status.retry_claim,
  db.requested): creates, reads and moves uploads, reads jobs, claims a failed job for a retry
  (UPDATE + its event), and records the jobs a user asks for (``POST /jobs``: INSERT of a
  ``queued`` row owned by the caller + its event). Its only job rows: a retry re-queues an
  existing job.
* ``enqueue`` (lambdas/enqueue.py: offload.s3events, queue.Producer): reads and moves uploads,
  reads an upload's jobs, records the jobs it queues (INSERT ... ON CONFLICT DO NOTHING).
* ``worker`` (fargate_worker: offload.db.status, offload.db.upload_outcomes): job rows and
  their events; of the uploads table, only what ending an upload's flow takes. A worker runs
  hostile input, so its grant there is column-level and as narrow as the two final-state
  writes (``processed`` with its result key, ``failed`` with its step and reason): UPDATE of
  exactly the columns they set, SELECT of exactly the columns they match on (id, owner, the
  object's revision, the state) and return. It cannot read an upload's key, filename, sizes
  or content type, create or delete an upload, or point a row at another object or owner.
* ``reconciler`` (offload/reconcile.py): reads uploads and jobs, moves uploads, re-queues and
  settles jobs, records the jobs it queues again.
* ``maintenance`` (the worker's system jobs, ``fargate_worker.system_jobs``; today the
  ``retention`` job, ``offload.db.retention``): reads and DELETEs uploads and jobs, nothing
  else (no INSERT, no UPDATE; the job_events of a deleted job go with it through the foreign
  key's ON DELETE CASCADE, which PostgreSQL runs as the table's owner, so the role needs no
  privilege on job_events). Only the worker's parent process logs in as it, for system jobs
  it runs itself: the sandbox children, which run hostile input, get neither its login nor
  any AWS credentials to sign one (``fargate_worker.sandbox.SECRET_ENVIRONMENT``,
  ``child_settings``), exactly as for the worker's own login. A separate role rather than
  DELETE for ``worker``: the worker's role is what every upload step writes status with, and
  it never sees ``uploads`` at all; giving it DELETE on uploads would widen what a bug in any
  step's status path could do to every user's data.

Only ``maintenance`` may DELETE, and only uploads and jobs. No role may TRUNCATE, create
objects in the schema, or read ``schema_migrations``: the schema and its tables belong to the
migrator. ``job_events`` is append-only for everyone
(INSERT; its ``id`` sequence needs USAGE). INSERT/UPDATE ... RETURNING needs SELECT on the
returned columns, hence SELECT wherever a role writes.

Roles are cluster-wide while schemas are per database: their names carry a prefix
(``OFFLOAD_DB_ROLE_PREFIX``; the deploy uses the schema's name, ``offload``, so the roles are
``offload_api``, ...), and tests give each schema roles of its own. Each role's search_path
in this database is the schema, so connections need no startup option (RDS Proxy refuses
them).

On RDS a role logs in with an IAM token (``rds-db:connect``) once it is a member of
``rds_iam``; that role exists only on RDS, so elsewhere (local PostgreSQL, tests) the grant is
skipped and the roles log in however the server's pg_hba allows.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

import psycopg
from psycopg import errors, sql

from offload.db.upload_outcomes import READ_COLUMNS, WRITTEN_COLUMNS

log = logging.getLogger(__name__)

COMPONENTS = ("api", "enqueue", "worker", "reconciler", "maintenance")
RDS_IAM_ROLE = "rds_iam"
_MAX_NAME = 63  # PostgreSQL's NAMEDATALEN - 1
_PREFIX = re.compile(r"[a-z_][a-z0-9_]*")
_LONGEST_COMPONENT = max(len(c) for c in COMPONENTS)
MAX_PREFIX = _MAX_NAME - 1 - _LONGEST_COMPONENT

# table -> privileges, per component. The one place to change when a query changes. A privilege
# may name columns ("UPDATE (a, b)"): PostgreSQL's column-level grant.
GRANTS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "api": {
        "uploads": ("SELECT", "INSERT", "UPDATE"),
        "jobs": ("SELECT", "INSERT", "UPDATE"),
        "job_events": ("INSERT",),
    },
    "enqueue": {
        "uploads": ("SELECT", "UPDATE"),
        "jobs": ("SELECT", "INSERT"),
        "job_events": ("INSERT",),
    },
    "worker": {
        "jobs": ("SELECT", "INSERT", "UPDATE"),
        "job_events": ("INSERT",),
        # column-level: offload.db.upload_outcomes (see the module docstring)
        "uploads": (
            f"SELECT ({', '.join(READ_COLUMNS)})",
            f"UPDATE ({', '.join(WRITTEN_COLUMNS)})",
        ),
    },
    "reconciler": {
        "uploads": ("SELECT", "UPDATE"),
        "jobs": ("SELECT", "INSERT", "UPDATE"),
        "job_events": ("INSERT",),
    },
    "maintenance": {
        "uploads": ("SELECT", "DELETE"),
        "jobs": ("SELECT", "DELETE"),
    },
}
# Sequences behind the tables a role inserts into (serial columns).
SEQUENCES = {"job_events": "job_events_id_seq"}


def check_prefix(prefix: str) -> str:
    """The prefix, if every role name made from it is a valid unquoted PostgreSQL name."""
    if not _PREFIX.fullmatch(prefix) or len(prefix) > MAX_PREFIX:
        raise ValueError(
            f"database role prefix {prefix!r} must match {_PREFIX.pattern} and be at most"
            f" {MAX_PREFIX} characters"
        )
    return prefix


def role_name(prefix: str, component: str) -> str:
    """``<prefix>_<component>``: the database user a component logs in as."""
    if component not in GRANTS:
        raise ValueError(f"unknown component {component!r}; one of {', '.join(COMPONENTS)}")
    return f"{check_prefix(prefix)}_{component}"


def role_names(prefix: str) -> dict[str, str]:
    return {component: role_name(prefix, component) for component in COMPONENTS}


def ensure_roles(
    conn: psycopg.Connection,
    schema: str,
    prefix: str,
    *,
    iam_role: str = RDS_IAM_ROLE,
) -> dict[str, str]:
    """Create the component roles if missing and set their grants and search_path to what
    GRANTS says (privileges granted earlier and no longer listed are revoked). Idempotent and
    safe when several migrations run at once (a concurrent CREATE ROLE is tolerated). Runs in
    one transaction: a session opened meanwhile sees the old grants or the new ones."""
    names = role_names(prefix)
    for name in names.values():
        _create_role(conn, name)
    iam = _role_exists(conn, iam_role)
    row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None
    database = row[0]
    with conn.transaction():
        for component, name in names.items():
            role = sql.Identifier(name)
            ident = sql.Identifier(schema)
            conn.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(ident, role))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(ident, role))
            conn.execute(
                sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(ident, role)
            )
            conn.execute(
                sql.SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA {} FROM {}").format(ident, role)
            )
            for table, privileges in GRANTS[component].items():
                conn.execute(
                    sql.SQL("GRANT {} ON {} TO {}").format(
                        sql.SQL(", ").join(sql.SQL(p) for p in privileges),
                        sql.Identifier(schema, table),
                        role,
                    )
                )
                if table in SEQUENCES and "INSERT" in privileges:
                    conn.execute(
                        sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(
                            sql.Identifier(schema, SEQUENCES[table]), role
                        )
                    )
            conn.execute(
                sql.SQL("ALTER ROLE {} IN DATABASE {} SET search_path = {}").format(
                    role, sql.Identifier(database), ident
                )
            )
            if iam:
                conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(iam_role), role))
    log.info(
        "database roles %s have their grants on schema %s%s",
        ", ".join(names.values()),
        schema,
        " (IAM authentication)" if iam else "",
    )
    return names


def drop_roles(conn: psycopg.Connection, names: Iterable[str]) -> None:
    """Drop roles and their privileges in this database (tests; a role granted privileges
    in another database must be cleaned there first)."""
    for name in names:
        if _role_exists(conn, name):
            with conn.transaction():
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def _role_exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None


def _create_role(conn: psycopg.Connection, name: str) -> None:
    """CREATE ROLE has no IF NOT EXISTS, and two runners may both find the role missing: the
    loser gets duplicate_object, or unique_violation on pg_authid when both inserts overlap."""
    if _role_exists(conn, name):
        return
    try:
        with conn.transaction():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        log.info("created database role %s", name)
    except (errors.DuplicateObject, errors.UniqueViolation):
        log.info("database role %s was created concurrently", name)
