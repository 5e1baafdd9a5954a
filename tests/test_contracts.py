"""The shared contracts: settings, job references and ids, S3 key layout."""

from __future__ import annotations

import pytest
import redis

from offload.jobs import INSPECT, THUMBNAIL, InvalidJobData, JobRef, job_id
from offload.keys import KeyLayoutError, UploadKey, sanitize_filename
from offload.redis_conn import redact
from offload.settings import DATABASE_CA_FILE, Settings, SettingsError


def test_settings_defaults_and_environment():
    defaults = Settings.from_env({})
    assert defaults.default_attempts == 5 and defaults.default_backoff_ms == 2000
    assert defaults.queue_prefix == "{offload}"
    options = defaults.default_job_options()
    assert options["backoff"] == {"type": "exponential", "delay": 2000}
    custom = Settings.from_env(
        {
            "OFFLOAD_QUEUE_PREFIX": "tenant-a",
            "OFFLOAD_CONCURRENCY": "8",
            "OFFLOAD_REMOVE_ON_COMPLETE": '{"age": 60}',
            "OFFLOAD_REMOVE_ON_FAIL": "false",
            "OFFLOAD_PROCESSOR_MODULES": "a.b, c.d",
        }
    )
    assert custom.queue_prefix == "{tenant-a}"  # hash-tagged for cluster mode
    assert custom.concurrency == 8
    assert custom.remove_on_complete == {"age": 60} and custom.remove_on_fail is False
    assert custom.processor_modules == ("a.b", "c.d")
    assert Settings.from_env({"OFFLOAD_QUEUE_PREFIX": "{x}y"}).queue_prefix == "{x}y"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OFFLOAD_CONCURRENCY", "0"),
        ("OFFLOAD_CONCURRENCY", "many"),
        ("OFFLOAD_REMOVE_ON_COMPLETE", '{"forever": 1}'),
        ("OFFLOAD_REMOVE_ON_COMPLETE", '{"age": "a week"}'),
        ("OFFLOAD_REMOVE_ON_FAIL", '{"count": -1}'),
        ("OFFLOAD_REMOVE_ON_FAIL", "maybe"),
    ],
)
def test_bad_settings_fail_at_start(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_secrets_stay_out_of_reprs_and_logs():
    settings = Settings.from_env(
        {"REDIS_AUTH_TOKEN": "tok-123", "DATABASE_URL": "postgresql://u:pw-456@db/x"}
    )
    assert "tok-123" not in repr(settings) and "pw-456" not in repr(settings)
    assert redact("rediss://user:secret@cache:6379/0") == "rediss://cache:6379/0"


def test_job_ids_are_deterministic_and_distinct():
    ref = JobRef(bucket="b", key="uploads/u/1/a.bin", etag='"abc"')
    assert job_id(INSPECT, ref) == job_id(INSPECT, JobRef(bucket="b", key=ref.key, etag="abc"))
    assert job_id(INSPECT, ref) != job_id(THUMBNAIL, ref)
    assert job_id(INSPECT, ref) != job_id(INSPECT, JobRef(bucket="b", key=ref.key, etag="abd"))
    versioned = JobRef(bucket="b", key=ref.key, etag="abc", version_id="v1")
    assert job_id(INSPECT, versioned) != job_id(INSPECT, ref)
    assert ":" not in job_id(INSPECT, ref) and not job_id(INSPECT, ref).isdigit()


@pytest.mark.parametrize(
    "data",
    [None, [], {"key": "k"}, {"bucket": "b", "key": ""}, {"bucket": "b", "key": "k", "x": 1}],
)
def test_invalid_job_data_is_rejected(data):
    with pytest.raises(InvalidJobData):
        JobRef.from_data(data)


def test_job_ref_round_trip():
    ref = JobRef(bucket="b", key="k", version_id="v", owner="o", upload_id="u")
    assert JobRef.from_data(ref.to_data()) == ref


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "_.._etc_passwd"),
        ("a\x00b\x1fc.txt", "abc.txt"),
        ("evil\u202egnp.exe", "evilgnp.exe"),
        ("Résumé 2026.docx", "Résumé 2026.docx"),
        ("   ", "file"),
        (".hidden", "hidden"),
    ],
)
def test_filenames_are_sanitised(raw, expected):
    assert sanitize_filename(raw) == expected


def test_long_filenames_are_cut_on_a_character_boundary():
    cut = sanitize_filename("é" * 4000)
    assert len(cut.encode()) <= 200 and cut == "é" * 100


def test_upload_key_layout():
    key = UploadKey.build("sub-1", "up_1", "a/b.txt")
    assert str(key) == "uploads/sub-1/up_1/a_b.txt"
    assert UploadKey.parse(str(key)) == key
    assert key.output_key("manifest.json") == "processed/sub-1/up_1/manifest.json"
    for bad in ("processed/a/b/c", "uploads/a/b", "uploads/a/b/c/d", "uploads/../b/c"):
        with pytest.raises(KeyLayoutError):
            UploadKey.parse(bad)
    with pytest.raises(KeyLayoutError):
        UploadKey.build("../x", "u", "f")


def test_producer_fails_fast_when_redis_is_down(settings):
    import asyncio
    import time
    from dataclasses import replace

    from offload.queue import producer

    down = replace(settings, redis_url="redis://127.0.0.1:1/0")

    async def scenario():
        async with producer(down) as prod:
            await prod.queue.add("noop", {"bucket": "b", "key": "k"}, {"jobId": "fast-fail"})

    started = time.monotonic()
    with pytest.raises(redis.exceptions.ConnectionError, match=r"(?i)connect"):
        asyncio.run(scenario())
    assert time.monotonic() - started < 10


def test_database_url_from_injected_parts():
    settings = Settings.from_env(
        {
            "DATABASE_HOST": "db.internal",
            "DATABASE_PORT": "5433",
            "DATABASE_NAME": "offload",
            "DATABASE_USER": "app",
            "DATABASE_PASSWORD": "p@ss/word",
        }
    )
    assert settings.database_url == (
        "postgresql://app:p%40ss%2Fword@db.internal:5433/offload"
        f"?sslmode=verify-full&sslrootcert={DATABASE_CA_FILE}"
    )
    local = Settings.from_env({"DATABASE_HOST": "127.0.0.1", "DATABASE_SSLMODE": "disable"})
    assert local.database_url == "postgresql://127.0.0.1:5432/postgres?sslmode=disable"
    with pytest.raises(SettingsError, match="DATABASE_SSLMODE"):
        Settings.from_env({"DATABASE_SSLMODE": "required"})
    explicit = Settings.from_env({"DATABASE_URL": "postgresql://x@y/z", "DATABASE_HOST": "h"})
    assert explicit.database_url == "postgresql://x@y/z"
