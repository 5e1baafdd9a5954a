"""IAM database authentication: the runtime logs in as its component's role with a token from
``rds:generate_db_auth_token`` (botocore's real signer), never with a password.

The test server trusts local logins, so it does not check the token; what is checked here is
that the token is what RDS checks (signed for the host and port the connection goes to, for
that user, an ``rds-db:connect`` presigned request), that a pool logs in as the role with it,
and that a fresh token is signed only when the one in hand is old.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from offload.db.credentials import (
    IamDatabaseUrl,
    database_url_source,
    database_url_with_token,
    resolve_database_url,
)
from offload.db.pool import create_pool
from offload.db.status import JobIdentity, StatusStore
from offload.jobs import JobRef
from offload.settings import DATABASE_CA_FILE, Settings

PROXY = "offload-proxy.proxy-abc123.eu-west-1.rds.amazonaws.com"


@pytest.fixture
def aws_credentials(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    from offload import aws

    monkeypatch.setattr(aws, "_CLIENTS", {})  # a client made with these credentials


def _token_query(token: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit("https://" + token).query)


def test_the_token_is_signed_for_the_proxy_host_and_the_user(aws_credentials):
    base = "postgresql://db.internal:5432/offload?sslmode=verify-full&sslrootcert=/ca.pem"
    source = IamDatabaseUrl(base, "offload_api", PROXY)
    params = conninfo_to_dict(source.url())

    assert params["user"] == "offload_api"
    assert params["host"] == PROXY  # the token is only good for the host it names
    assert (params["port"], params["dbname"]) == ("5432", "offload")
    assert (params["sslmode"], params["sslrootcert"]) == ("verify-full", "/ca.pem")
    token = params["password"]
    assert token.startswith(f"{PROXY}:5432/?")
    query = _token_query(token)
    assert query["Action"] == ["connect"] and query["DBUser"] == ["offload_api"]
    assert "/eu-west-1/rds-db/aws4_request" in query["X-Amz-Credential"][0]
    assert query["X-Amz-Expires"] == ["900"]
    assert "offload_api" in repr(source) and token not in repr(source)


def test_tls_options_given_replace_the_base_urls():
    url = database_url_with_token(
        "postgresql://olduser:oldpw@db:6432/x?sslmode=require",
        "offload_worker",
        "tok/en?=&",
        sslmode="verify-full",
        sslrootcert="/etc/rds-ca.pem",
    )
    params = conninfo_to_dict(url)
    assert params == {
        "user": "offload_worker",
        "password": "tok/en?=&",
        "host": "db",
        "port": "6432",
        "dbname": "x",
        "sslmode": "verify-full",
        "sslrootcert": "/etc/rds-ca.pem",
    }


def test_a_token_is_reused_until_it_is_old(monkeypatch):
    signed: list[tuple[str, int, str]] = []

    def sign(host: str, port: int, user: str) -> str:
        signed.append((host, port, user))
        return f"token-{len(signed)}"

    clock = [1000.0]
    monkeypatch.setattr("offload.db.credentials.time.monotonic", lambda: clock[0])
    source = IamDatabaseUrl("postgresql://db:5433/x", "u", sign=sign, max_age_s=600)
    assert conninfo_to_dict(source.url())["password"] == "token-1"
    clock[0] += 599
    assert conninfo_to_dict(asyncio.run(source()))["password"] == "token-1"
    clock[0] += 2
    assert conninfo_to_dict(asyncio.run(source()))["password"] == "token-2"
    assert signed == [("db", 5433, "u"), ("db", 5433, "u")]


def test_the_settings_select_iam_over_the_secret(aws_credentials):
    settings = Settings.from_env(
        {
            "DATABASE_HOST": "db.internal",
            "DATABASE_NAME": "offload",
            "DATABASE_IAM_USER": "offload_worker",
            "DATABASE_SECRET_ARN": "arn:aws:secretsmanager:eu-west-1:1:secret:x",
        }
    )
    assert settings.database_iam_user == "offload_worker"
    assert isinstance(database_url_source(settings), IamDatabaseUrl)
    params = conninfo_to_dict(resolve_database_url(settings))
    assert params["user"] == "offload_worker" and params["host"] == "db.internal"
    # DATABASE_SSLMODE's default, from the base URL: the server verified against the shipped roots
    assert params["sslmode"] == "verify-full" and params["sslrootcert"] == DATABASE_CA_FILE


def test_a_pool_logs_in_as_the_role_with_a_token(database_url, pg_schema, aws_credentials):
    """The worker's pool as deployed (IAM user, no startup options), on the real server."""
    base = make_conninfo(database_url, user="ignored")
    source = IamDatabaseUrl(base, f"{pg_schema}_worker")

    async def scenario() -> tuple[str, bool]:
        pool = create_pool(source, pg_schema, max_size=1, schema_from_role=True)
        await pool.open(wait=True, timeout=10)
        try:
            job = JobIdentity("job-iam", "inspect", "q", JobRef("bucket", "key"))
            stored = await StatusStore(pool).mark_queued(job, max_attempts=3)
            async with pool.connection() as conn:
                user = (await (await conn.execute("SELECT current_user")).fetchone())[0]
        finally:
            await pool.close()
        return user, stored

    assert asyncio.run(scenario()) == (f"{pg_schema}_worker", True)


def test_the_api_lambda_logs_in_as_its_iam_user(lambda_env, settings, aws_credentials, monkeypatch):
    """The API function as deployed: DATABASE_IAM_USER names its database user, the token is
    signed at cold start. As the worker's user the same request cannot create the upload
    (no privilege on uploads): the login is the one the setting names."""
    from lambdas import runtime
    from tests.support.apigw import call, configure

    body = {"filename": "a.txt", "size": 3, "contentType": "text/plain"}
    configure(monkeypatch, DATABASE_IAM_USER=f"{settings.database_schema}_worker")
    refused = call("POST", "/uploads", body=body)
    assert refused.status == 500  # permission denied for table uploads

    runtime.reset()  # a new container (cold start)
    configure(monkeypatch, DATABASE_IAM_USER=f"{settings.database_schema}_api")
    created = call("POST", "/uploads", body=body)
    assert created.status == 201, created.body
