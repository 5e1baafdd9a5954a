"""Rotated database credentials reach the pool: new connections use the secret's new value.

The server here trusts local connections (passwords are not checked), so the rotation is
simulated by a change of the secret's user: a pool that kept the value it read first would
still log in as the old role, one that reads the secret again logs in as the new one.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import boto3
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from offload.db.credentials import (
    SecretDatabaseUrl,
    database_url_source,
    resolve_database_url,
)
from offload.db.pool import create_pool
from offload.settings import DATABASE_CA_FILE, Settings, SettingsError
from tests.support.servers import unique_name


def _secret(url: str) -> str:
    parts = conninfo_to_dict(url)
    return json.dumps(
        {
            "username": parts["user"],
            "password": parts.get("password", ""),
            "host": parts.get("host", "127.0.0.1"),
            "port": int(parts.get("port", 5432)),
            "dbname": parts["dbname"],
        }
    )


@pytest.fixture
def second_role(database_url):
    role = unique_name("rot")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'second-password'")
    yield role
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )
        conn.execute(f"DROP ROLE {role}")


def test_a_pool_picks_up_the_rotated_secret_for_new_connections(
    moto_endpoint, monkeypatch, database_url, app_role, second_role
):
    first_url, first_role = app_role
    secrets = boto3.client("secretsmanager", endpoint_url=moto_endpoint)
    arn = secrets.create_secret(Name=unique_name("db"), SecretString=_secret(first_url))["ARN"]
    monkeypatch.setenv("SECRETS_ENDPOINT_URL", moto_endpoint)
    source = SecretDatabaseUrl(arn, max_age_s=0.2, sslmode="disable")

    async def current_user(pool) -> str:
        async with pool.connection() as conn:
            return (await (await conn.execute("SELECT current_user")).fetchone())[0]

    async def scenario() -> tuple[str, str]:
        pool = create_pool(source, "public", max_size=1)
        await pool.open(wait=True, timeout=10)
        try:
            before = await current_user(pool)
            # Rotation: the secret changes; connections already open keep working, as they
            # do in PostgreSQL, until the pool replaces them (here: at once).
            second = _secret(first_url).replace(first_role, second_role)
            secrets.put_secret_value(SecretId=arn, SecretString=second)
            with psycopg.connect(database_url, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                    (first_role,),
                )
            await asyncio.sleep(0.3)  # the copy in hand is now older than max_age_s
            after = None
            for _ in range(50):  # the first use may meet the terminated connection
                try:
                    after = await current_user(pool)
                    break
                except psycopg.OperationalError:
                    await asyncio.sleep(0.1)
        finally:
            await pool.close()
        return before, after

    before, after = asyncio.run(scenario())
    assert before == first_role
    assert after == second_role


def test_the_copy_in_hand_is_reused_until_it_is_old(monkeypatch):
    reads: list[str] = []
    secret = json.dumps({"username": "u", "password": "p/w", "host": "db", "dbname": "d"})

    def read(arn: str) -> str:
        reads.append(arn)
        return secret

    source = SecretDatabaseUrl("arn:s", "proxy.host", max_age_s=60, read=read)
    assert source.url() == (
        f"postgresql://u:p%2Fw@proxy.host:5432/d?sslmode=verify-full&sslrootcert={DATABASE_CA_FILE}"
    )
    assert asyncio.run(source()) == source.url()
    assert reads == ["arn:s"]
    assert "p/w" not in repr(source) and "p%2Fw" not in repr(source)
    seeded = SecretDatabaseUrl("arn:s", read=read, initial="postgresql://cold-start")
    assert seeded.url() == "postgresql://cold-start" and reads == ["arn:s"]


def test_a_secret_arn_in_the_settings_makes_the_pool_read_the_secret():
    assert database_url_source(Settings(database_url="postgresql://x@y/z")) == "postgresql://x@y/z"
    source = database_url_source(Settings(database_secret_arn="arn:db"))
    assert isinstance(source, SecretDatabaseUrl)


def test_the_settings_tls_reaches_the_url_built_from_the_secret(
    moto_endpoint, monkeypatch, tmp_path
):
    """DATABASE_SSLMODE / DATABASE_SSLROOTCERT apply to the secret's URL, which the pool and
    the migrations connect with; the CA file only where libpq reads it."""
    secret = json.dumps({"username": "u", "password": "p", "host": "db.internal"})
    arn = boto3.client("secretsmanager", endpoint_url=moto_endpoint).create_secret(
        Name=unique_name("db"), SecretString=secret
    )["ARN"]
    monkeypatch.setenv("SECRETS_ENDPOINT_URL", moto_endpoint)
    ca = tmp_path / "ca dir" / "roots.pem"
    ca.parent.mkdir()
    ca.write_bytes(Path(DATABASE_CA_FILE).read_bytes())
    env = {"DATABASE_SECRET_ARN": arn, "DATABASE_SSLROOTCERT": str(ca)}
    url = resolve_database_url(Settings.from_env(env))
    assert url.endswith(
        "@db.internal:5432/postgres?sslmode=verify-full&sslrootcert=" + str(ca).replace(" ", "%20")
    )
    assert conninfo_to_dict(url)["sslrootcert"] == str(ca)
    source = database_url_source(Settings.from_env({**env, "DATABASE_SSLMODE": "disable"}))
    assert isinstance(source, SecretDatabaseUrl)
    assert source.url().endswith("@db.internal:5432/postgres?sslmode=disable")


def test_a_ca_file_that_is_not_there_fails_at_start(tmp_path):
    with pytest.raises(SettingsError, match="DATABASE_SSLROOTCERT"):
        Settings.from_env({"DATABASE_SSLROOTCERT": str(tmp_path / "missing.pem")})
    # unused without verification: not checked
    Settings.from_env(
        {"DATABASE_SSLROOTCERT": str(tmp_path / "missing.pem"), "DATABASE_SSLMODE": "disable"}
    )


def test_a_checked_pool_replaces_a_connection_closed_while_idle(database_url):
    """RDS Proxy closes client connections idle for 30 minutes; a Lambda container's pool
    checks a connection that has been idle before handing it out, so the next invocation is
    not the one that finds out. Without the check, the first statement fails. A connection used
    moments ago is trusted without a round trip (under load every checkout is one of those)."""

    async def first_statement_after_the_close(check_after_s: float | None) -> str:
        pool = create_pool(database_url, "public", max_size=1, check_after_idle_s=check_after_s)
        await pool.open(wait=True, timeout=10)
        try:
            async with pool.connection() as conn:
                pid = conn.info.backend_pid
                params = conn.info.get_parameters()
            with psycopg.connect(database_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            await asyncio.sleep(0.5)
            try:
                async with pool.connection() as conn:
                    await conn.execute("SELECT 1")
                    assert conn.info.backend_pid != pid
            except psycopg.OperationalError:
                return "failed"
            # Dead peers are detected by the kernel within seconds, not minutes.
            assert params["keepalives_idle"] == "30" and params["tcp_user_timeout"] == "30000"
            return "fresh connection"
        finally:
            await pool.close()

    assert asyncio.run(first_statement_after_the_close(0.2)) == "fresh connection"
    assert asyncio.run(first_statement_after_the_close(60)) == "failed"  # trusted: not checked
    assert asyncio.run(first_statement_after_the_close(None)) == "failed"
