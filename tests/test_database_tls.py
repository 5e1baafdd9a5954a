"""The database URLs the runtimes build verify the server (``sslmode=verify-full``), against a
real PostgreSQL speaking TLS with a certificate from a CA made by the test.

Before, the URLs said ``sslmode=require``: encrypted, but any certificate was accepted, so
whoever answered on the database's address (a spoofed DNS name, a host in the VPC that took
the IP) got the password. Each refusal below was a successful connection then.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from offload.db.credentials import SecretDatabaseUrl, database_url_source
from offload.settings import DATABASE_CA_FILE, Settings
from tests.support.own_servers import new_run_id, sweep
from tests.support.tls_postgres import SERVER_NAME, TlsPostgres

pytestmark = pytest.mark.integration  # a server of its own, not the shared ones


@pytest.fixture(scope="session")
def tls_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsPostgres]:
    run_id = new_run_id()
    server = TlsPostgres(tmp_path_factory.mktemp("tls-postgres"), run_id)
    try:
        server.start()
        yield server
    finally:
        server.remove()
        sweep(run_id)


def _parts(server: TlsPostgres, host: str = SERVER_NAME, **extra: str) -> dict[str, str]:
    """The environment the worker's URL is built from (offload.settings), TLS left to the
    defaults unless ``extra`` says otherwise."""
    return {
        "DATABASE_HOST": host,
        "DATABASE_PORT": str(server.port),
        "DATABASE_NAME": "postgres",
        "DATABASE_USER": "postgres",
        **extra,
    }


def _secret_url(server: TlsPostgres, host: str = SERVER_NAME, **tls: str) -> str:
    """The URL SecretDatabaseUrl builds from an RDS-format secret (its own defaults for TLS
    unless ``tls`` says otherwise)."""
    secret = json.dumps(
        {"username": "postgres", "password": "unused", "host": host, "port": server.port}
    )
    return SecretDatabaseUrl("arn:secret", read=lambda _arn: secret, **tls).url()


def _encrypted(url: str) -> bool:
    with psycopg.connect(url, connect_timeout=10) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert row is not None
    return bool(row[0])


def test_the_default_is_verify_full_against_the_shipped_aws_roots() -> None:
    settings = Settings.from_env({})
    assert settings.database_sslmode == "verify-full"
    assert settings.database_sslrootcert == DATABASE_CA_FILE
    assert Path(DATABASE_CA_FILE).is_file()
    url = database_url_source(Settings(database_secret_arn="arn:db"))
    assert isinstance(url, SecretDatabaseUrl)


def test_the_urls_we_build_connect_to_the_right_server(tls_postgres: TlsPostgres) -> None:
    ca = str(tls_postgres.ca_file)
    parts = Settings.from_env(_parts(tls_postgres, DATABASE_SSLROOTCERT=ca))
    assert "sslmode=verify-full" in parts.database_url
    assert _encrypted(parts.database_url)
    assert _encrypted(_secret_url(tls_postgres, sslrootcert=ca))


def test_a_name_the_certificate_does_not_hold_is_refused(tls_postgres: TlsPostgres) -> None:
    """The same server, reached by its address: the certificate names only ``localhost``."""
    ca = str(tls_postgres.ca_file)
    by_address = Settings.from_env(_parts(tls_postgres, "127.0.0.1", DATABASE_SSLROOTCERT=ca))
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        _encrypted(by_address.database_url)
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        _encrypted(_secret_url(tls_postgres, "127.0.0.1", sslrootcert=ca))
    # what the old URLs accepted: encrypted, to whoever answers
    assert _encrypted(_secret_url(tls_postgres, "127.0.0.1", sslmode="require"))


def test_a_certificate_for_another_name_is_refused(tls_postgres: TlsPostgres) -> None:
    """Whoever answers for the proxy's name (its address spoofed: ``hostaddr``) with a
    certificate the trusted CA issued for another name (``localhost``) is refused too."""
    proxy = "offload.proxy-abc.eu-west-1.rds.amazonaws.com"
    url = _secret_url(tls_postgres, proxy, sslrootcert=str(tls_postgres.ca_file))
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        _encrypted(url + "&hostaddr=127.0.0.1")


def test_a_certificate_from_another_ca_is_refused(tls_postgres: TlsPostgres) -> None:
    other = str(tls_postgres.other_ca_file)
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        _encrypted(_secret_url(tls_postgres, sslrootcert=other))
    # nor do the AWS roots the runtimes ship (the default) trust a CA of ours
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        _encrypted(Settings.from_env(_parts(tls_postgres)).database_url)
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        _encrypted(_secret_url(tls_postgres))
