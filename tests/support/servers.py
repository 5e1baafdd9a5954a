"""Real servers for tests and benchmarks: a moto S3 server in its own process, and fresh
isolated namespaces on the shared Redis and PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.conninfo import make_conninfo

from offload_local.servers import (
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    free_port,
    moto_server,
    wait_for_http,
)
from offload_local.stack import drop_schema

__all__ = ["free_port", "moto_server", "wait_for_http"]


def redis_url() -> str:
    return os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)


def database_url() -> str:
    return os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)


def aws_test_env(endpoint: str) -> dict[str, str]:
    """Environment for boto3 clients talking to moto (dummy credentials, fixed region)."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "S3_ENDPOINT_URL": endpoint,
        # EventBridge (an upload's final state, offload.upload_events): botocore's own
        # per-service endpoint variable, so every worker a test starts, in-process or not,
        # publishes to moto without a setting of its own.
        "AWS_ENDPOINT_URL_EVENTBRIDGE": endpoint,
    }


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@contextmanager
def pg_schema(url: str | None = None) -> Iterator[str]:
    """A migrated schema of its own, with the components' database roles of its own (named
    after it: ``<schema>_api``, ...; see :func:`role_url`); all dropped afterwards."""
    from offload.db.migrate import migrate
    from offload.db.roles import drop_roles, role_names

    url = url or database_url()
    schema = unique_name("t")
    try:
        migrate(url, schema, role_prefix=schema)
        yield schema
    finally:
        drop_schema(url, schema)
        with psycopg.connect(url, autocommit=True) as conn:
            drop_roles(conn, role_names(schema).values())


def role_url(url: str, schema: str, component: str) -> str:
    """``url`` logging in as the database role of ``component`` made for ``schema`` by
    :func:`pg_schema` (the test server trusts local logins: no password)."""
    from offload.db.roles import role_name

    return make_conninfo(url, user=role_name(schema, component))
