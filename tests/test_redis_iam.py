"""ElastiCache IAM authentication on the client side (offload/redis_iam.py): the token is a
SigV4-presigned ``connect`` request for the user on the replication group, signed locally with
the process's credentials, made afresh for each connection; redis-py gets it through a
credential provider (offload/redis_conn.py)."""

from __future__ import annotations

import asyncio
import datetime
import re
from urllib.parse import parse_qs, urlsplit

import botocore.session
import pytest
import redis.asyncio

from offload.redis_conn import connection_options
from offload.redis_iam import ElastiCacheIAMProvider
from offload.settings import Settings


def _session(monkeypatch, token: str | None = None) -> botocore.session.Session:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    if token:
        monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    else:
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return botocore.session.get_session()


def test_the_token_is_a_presigned_connect_request_for_the_user_and_cache(monkeypatch):
    provider = ElastiCacheIAMProvider(
        "offload-prod-worker", "Offload-Queue-RG", session=_session(monkeypatch, "sess-tok")
    )
    user, token = provider.get_credentials()
    assert user == "offload-prod-worker"
    assert not token.startswith("https://")
    parts = urlsplit("//" + token)
    assert (parts.netloc, parts.path) == ("offload-queue-rg", "/")
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query["Action"] == "connect" and query["User"] == "offload-prod-worker"
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert re.fullmatch(
        r"AKIDEXAMPLE/\d{8}/eu-west-1/elasticache/aws4_request", query["X-Amz-Credential"]
    )
    assert query["X-Amz-Expires"] == "900"
    assert query["X-Amz-SignedHeaders"] == "host"
    assert query["X-Amz-Security-Token"] == "sess-tok"
    assert re.fullmatch(r"[0-9a-f]{64}", query["X-Amz-Signature"])


def test_each_connection_gets_a_token_signed_anew(monkeypatch):
    """A token signed at another time, or for another user, differs: nothing is cached."""
    session = _session(monkeypatch)
    provider = ElastiCacheIAMProvider("u", "rg", session=session)
    first = provider.token()
    later = datetime.datetime(2030, 1, 1)
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda *a, **k: later)
    second = provider.token()
    assert first != second and "X-Amz-Date=20300101T000000Z" in second
    assert ElastiCacheIAMProvider("v", "rg", session=session).token() != second
    assert "X-Amz-Security-Token" not in first


def test_a_region_and_credentials_are_required(monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    with pytest.raises(ValueError, match="region"):
        ElastiCacheIAMProvider("u", "rg", session=botocore.session.get_session())


def test_iam_connection_options_use_the_provider_not_a_password(monkeypatch):
    _session(monkeypatch)
    options = connection_options(
        "rediss://:ignored@master.rg.cache.amazonaws.com:6379/0",
        user="offload-dev-producer",
        iam_auth_cache="rg",
    )
    assert "username" not in options and "password" not in options
    provider = options["credential_provider"]
    assert isinstance(provider, ElastiCacheIAMProvider)
    assert (provider.user, provider.cache_id) == ("offload-dev-producer", "rg")
    user, token = asyncio.run(provider.get_credentials_async())
    assert user == "offload-dev-producer" and token.startswith("rg/?Action=connect&User=")
    redis.asyncio.Redis(**options)  # redis-py takes it (it refuses a provider beside a password)
    with pytest.raises(ValueError, match="REDIS_USER"):
        connection_options("rediss://cache.local", iam_auth_cache="rg")


def test_a_user_without_iam_logs_in_with_the_password():
    options = connection_options("redis://127.0.0.1:6379/0", "pw", user="worker")
    assert (options["username"], options["password"]) == ("worker", "pw")
    assert "credential_provider" not in options


def test_settings_read_the_user_and_the_cache():
    settings = Settings.from_env({"REDIS_USER": "offload-dev-worker", "REDIS_IAM_AUTH_CACHE": "rg"})
    assert (settings.redis_user, settings.redis_iam_auth_cache) == ("offload-dev-worker", "rg")
    assert Settings.from_env({}).redis_iam_auth_cache is None
