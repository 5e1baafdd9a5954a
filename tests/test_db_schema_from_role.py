"""Connections through RDS Proxy: no libpq startup options, the schema from the role's default.

RDS Proxy refuses a startup packet with ``options`` ("Feature not supported: RDS Proxy
currently doesn't support command-line options"), which is how every other connection pins
its schema. These tests use a throwaway login role of their own on the real server, so the
role-level setting they make touches nothing else, and is dropped with the role.
"""

from __future__ import annotations

import asyncio
import json
import logging

import boto3
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import PoolTimeout

from lambdas import runtime
from offload.db.migrate import migrate
from offload.db.pool import create_pool
from offload.db.status import JobIdentity, StatusStore
from offload.jobs import JobRef
from offload.settings import Settings, SettingsError
from tests.support.servers import unique_name


def _session_schema(url: str) -> str:
    with psycopg.connect(url) as conn:  # no options: what a proxied connection starts with
        return conn.execute("SELECT current_schema()").fetchone()[0]


def test_migrations_make_the_schema_the_roles_default(app_role):
    url, _ = app_role
    schema = unique_name("s")
    migrate(url, schema)
    assert _session_schema(url) != schema  # plain migrations change no role setting

    migrate(url, schema, role_default=True)
    assert _session_schema(url) == schema
    migrate(url, schema, role_default=True)  # idempotent
    assert _session_schema(url) == schema


def test_a_pool_without_startup_options_writes_to_the_roles_schema(app_role):
    url, _ = app_role
    schema = unique_name("s")
    migrate(url, schema, role_default=True)

    async def scenario() -> tuple[str, int, int]:
        pool = create_pool(url, schema, max_size=1, schema_from_role=True)
        assert "options" not in pool.kwargs  # what RDS Proxy refuses
        await pool.open(wait=True, timeout=10)
        try:
            store = StatusStore(pool)
            for n in range(8):  # past psycopg's default prepare threshold (5)
                job = JobIdentity(f"job-{n}", "inspect", "q", JobRef("bucket", f"k{n}"))
                assert await store.mark_queued(job, max_attempts=3)
            async with pool.connection() as conn:
                options = (await (await conn.execute("SHOW search_path")).fetchone())[0]
                # Named prepared statements pin a proxied session: none may exist.
                prepared = await conn.execute("SELECT count(*) FROM pg_prepared_statements")
                n_prepared = (await prepared.fetchone())[0]
        finally:
            await pool.close()
        return options, n_prepared, _count_jobs(url, schema)

    search_path, n_prepared, jobs = asyncio.run(scenario())
    assert search_path == schema
    assert n_prepared == 0
    assert jobs == 8


def _count_jobs(url: str, schema: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT count(*) FROM {schema}.jobs").fetchone()[0]


def test_the_deploy_migration_sets_the_default_when_configured(app_role, monkeypatch):
    """The custom resource handler, as the stack runs it: role default set when asked."""
    from lambdas import migrate as migrate_handler

    url, _ = app_role
    schema = unique_name("s")
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("OFFLOAD_DB_SCHEMA", schema)
    monkeypatch.setenv("OFFLOAD_DB_SCHEMA_FROM_ROLE", "true")
    runtime.reset()
    try:
        migrate_handler.handler({"RequestType": "Create"}, None)
    finally:
        runtime.reset()
    assert _session_schema(url) == schema


def test_a_role_without_the_default_is_refused_with_a_clear_error(app_role, caplog):
    url, _ = app_role
    schema = unique_name("s")
    migrate(url, schema)  # the deploy's migration step did not set the role's default

    async def scenario() -> None:
        pool = create_pool(url, schema, max_size=1, schema_from_role=True)
        try:
            await pool.open(wait=True, timeout=2)
        finally:
            await pool.close()

    caplog.set_level(logging.WARNING, logger="psycopg.pool")
    with pytest.raises(PoolTimeout):
        asyncio.run(scenario())
    assert f"expected '{schema}'" in caplog.text and "OFFLOAD_DB_SCHEMA_FROM_ROLE" in caplog.text


def test_the_setting_is_read_from_the_environment():
    assert Settings.from_env({}).database_schema_from_role is False
    assert Settings.from_env({"OFFLOAD_DB_SCHEMA_FROM_ROLE": "true"}).database_schema_from_role
    with pytest.raises(SettingsError, match="OFFLOAD_DB_SCHEMA_FROM_ROLE"):
        Settings.from_env({"OFFLOAD_DB_SCHEMA_FROM_ROLE": "maybe"})


@pytest.mark.parametrize("proxy_host", ["offload.proxy-abc.eu-west-1.rds.amazonaws.com", ""])
def test_lambdas_behind_the_proxy_take_the_schema_from_the_role(
    moto_endpoint, monkeypatch, proxy_host
):
    """The Lambdas get DATABASE_PROXY_HOST from the stack: their connections must then carry
    no startup options, without any other setting to forget."""
    secret = {"username": "app", "password": "p@ss", "host": "db.internal", "port": 5432}
    arn = boto3.client("secretsmanager", endpoint_url=moto_endpoint).create_secret(
        Name=unique_name("db"), SecretString=json.dumps(secret)
    )["ARN"]
    monkeypatch.setenv("SECRETS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("DATABASE_SECRET_ARN", arn)
    monkeypatch.setenv("DATABASE_PROXY_HOST", proxy_host)
    runtime.reset()
    try:
        settings = runtime.settings()
    finally:
        runtime.reset()
    assert settings.database_schema_from_role is bool(proxy_host)
    assert conninfo_to_dict(settings.database_url)["host"] == (proxy_host or "db.internal")
