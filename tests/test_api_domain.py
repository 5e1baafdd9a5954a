"""The upload API's domain logic on its own: part planning, content types, cursors, the job
list's parameters."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from offload.db.uploads import Upload
from offload.jobs_service import JobService
from offload.pages import Cursor, InvalidCursor, decode_cursor, encode_cursor, parse_list_params
from offload.settings import Settings, SettingsError
from offload.uploads import (
    MAX_OBJECT_BYTES,
    MAX_PARTS,
    MIN_PART_BYTES,
    InvalidRequest,
    MiB,
    PartPlan,
    content_type_allowed,
    new_upload_id,
    normalize_content_type,
    parse_create_request,
    plan_parts,
    result_links,
    single_upload_limit,
    upload_plan,
    valid_upload_id,
)

SIZES = [
    1,
    MiB,
    5 * MiB,
    5 * MiB + 1,
    16 * MiB,
    100 * MiB + 1,
    MIN_PART_BYTES * MAX_PARTS,  # exactly 10,000 parts of 5 MiB
    MIN_PART_BYTES * MAX_PARTS + 1,  # one byte more: 6 MiB parts
    50 * 1024**3,
    1024**4,
    MAX_OBJECT_BYTES,
]


@pytest.mark.parametrize("minimum", [MIN_PART_BYTES, 16 * MiB, 5 * 1024 * MiB])
@pytest.mark.parametrize("size", SIZES)
def test_part_plan_fits_s3_limits(size, minimum):
    plan = plan_parts(size, minimum)
    assert plan.part_count <= MAX_PARTS
    assert plan.part_size >= minimum and plan.part_size % MiB == 0
    assert plan.part_size <= 5 * 1024 * MiB
    assert plan.part_size * (plan.part_count - 1) < size <= plan.part_size * plan.part_count
    last = plan.part_bytes(plan.part_count)
    assert 0 < last <= plan.part_size
    assert sum(plan.part_bytes(n) for n in range(1, plan.part_count + 1)) == size
    # the smallest whole-MiB part size that works: one MiB less would need too many parts
    if plan.part_size > minimum:
        assert -(-size // (plan.part_size - MiB)) > MAX_PARTS
    # the plan of its own part size is the same plan (what a stored part size relies on)
    assert plan_parts(size, plan.part_size) == plan


def test_part_plan_examples():
    assert (plan_parts(16 * MiB).part_size, plan_parts(16 * MiB).part_count) == (5 * MiB, 4)
    assert plan_parts(16 * MiB).part_bytes(4) == MiB
    big = plan_parts(50 * 1024**3)
    assert (big.part_size, big.part_count) == (6 * MiB, 8534)
    for bad in (0, -1, MAX_OBJECT_BYTES + 1):
        with pytest.raises(ValueError):
            plan_parts(bad)


def test_part_plan_with_a_minimum_part_size():
    plan = plan_parts(16 * MiB + 1, 16 * MiB)
    assert (plan.part_size, plan.part_count, plan.part_bytes(2)) == (16 * MiB, 2, 1)
    assert plan_parts(MiB, 16 * MiB) == PartPlan(size=MiB, part_size=16 * MiB, part_count=1)
    # the minimum holds up to 10,000 parts of it; beyond, the smallest whole MiB that fits
    assert plan_parts(16 * MiB * MAX_PARTS, 16 * MiB).part_size == 16 * MiB
    assert plan_parts(16 * MiB * MAX_PARTS + 1, 16 * MiB).part_size == 17 * MiB
    assert plan_parts(200 * 1024**3, 16 * MiB).part_size == 21 * MiB
    assert plan_parts(MAX_OBJECT_BYTES, 16 * MiB).part_size == 525 * MiB
    for bad in (0, 4 * MiB, 5 * MiB + 1, 16 * MiB - 1, 5 * 1024 * MiB + MiB):
        with pytest.raises(ValueError, match="min_part_bytes"):
            plan_parts(16 * MiB, bad)


def _row(size: int, part_size: int | None) -> Upload:
    now = datetime.now(UTC)
    return Upload(
        id="u", owner="o", bucket="b", key="k", filename="f", content_type="video/mp4",
        size_announced=size, size_actual=None, etag=None, version_id=None,
        multipart_upload_id="mpu", state="pending", error=None, created_at=now, updated_at=now,
        part_size=part_size,
    )  # fmt: skip


def test_upload_plan_uses_the_stored_part_size_else_the_5_mib_rule():
    size = 100 * MiB + 1
    assert upload_plan(_row(size, 16 * MiB)) == PartPlan(size, 16 * MiB, 7)
    assert upload_plan(_row(size, 8 * MiB)) == PartPlan(size, 8 * MiB, 13)
    # rows from before migration 0002: the rule they were created under
    assert upload_plan(_row(size, None)) == PartPlan(size, 5 * MiB, 21)
    big = 60 * 1024**3
    assert upload_plan(_row(big, None)) == plan_parts(big) == PartPlan(big, 7 * MiB, 8778)


def test_part_size_setting_default_and_bounds():
    assert Settings().part_size_bytes == 16 * MiB
    assert Settings.from_env({}).part_size_bytes == 16 * MiB
    assert Settings.from_env({"OFFLOAD_PART_SIZE_MIB": ""}).part_size_bytes == 16 * MiB
    assert Settings.from_env({"OFFLOAD_PART_SIZE_MIB": "5"}).part_size_bytes == 5 * MiB
    assert Settings.from_env({"OFFLOAD_PART_SIZE_MIB": "64"}).part_size_bytes == 64 * MiB
    assert Settings.from_env({"OFFLOAD_PART_SIZE_MIB": "5120"}).part_size_bytes == 5 * 1024**3
    for bad, why in [
        ("4", ">= 5"),
        ("0", ">= 5"),
        ("-16", ">= 5"),
        ("5121", "<= 5120"),
        ("16.5", "integer"),
        ("16MiB", "integer"),
    ]:
        with pytest.raises(SettingsError, match=f"OFFLOAD_PART_SIZE_MIB must be.*{why}"):
            Settings.from_env({"OFFLOAD_PART_SIZE_MIB": bad})


def test_single_limit_is_capped_by_s3():
    settings = replace(Settings(), single_upload_max_bytes=10 * 1024**3)
    assert single_upload_limit(settings) == 5 * 1024**3


@pytest.mark.parametrize(
    ("content_type", "allowed", "expected"),
    [
        ("image/png", ("image/*",), True),
        ("image/png", ("IMAGE/*",), True),
        ("image/png", ("image/png",), True),
        ("image/png", ("image/jpeg", "video/*"), False),
        ("imagex/png", ("image/*",), False),
        ("text/csv", ("text/plain",), False),
        ("text/csv", ("*/*",), True),
        ("application/pdf", ("application/pdf; q=1",), True),
        ("application/pdf", (), False),
    ],
)
def test_content_type_matching(content_type, allowed, expected):
    assert content_type_allowed(content_type, allowed) is expected


def test_content_type_normalisation():
    assert normalize_content_type(" Text/Plain ; charset=UTF-8") == "text/plain"
    assert normalize_content_type("application/vnd.ms-excel") == "application/vnd.ms-excel"
    for bad in ("", "text", "text/", "/plain", "text/*", "a b/c", "t\u00e9xt/plain", "x" * 300):
        with pytest.raises(InvalidRequest):
            normalize_content_type(bad)


def test_create_request_keeps_the_raw_filename_for_the_key_builder():
    request = parse_create_request(
        {"filename": "../a.txt", "size": 3, "contentType": "TEXT/PLAIN"}, Settings()
    )
    assert (request.filename, request.size, request.content_type) == ("../a.txt", 3, "text/plain")


def test_upload_ids_are_random_key_segments():
    ids = {new_upload_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(valid_upload_id(i) and len(i) == 22 for i in ids)
    # 1 in 64 would start with "-", which `offload status <id>` would take for an option.
    assert not any(i.startswith("-") for i in ids)
    assert not valid_upload_id("../x") and not valid_upload_id("") and not valid_upload_id("a.b")


def test_cursor_round_trip_is_exact():
    at = datetime(2026, 11, 23, 15, 4, 5, 123456, tzinfo=UTC)
    for job_id in ("inspect-abc", "a" * 200, "42", "x.y_z-1"):
        cursor = Cursor(at, job_id)
        token = encode_cursor(cursor)
        assert "=" not in token and "/" not in token and "+" not in token
        assert decode_cursor(token) == cursor
    for no_job_id in ("", "ünïcode", "a" * 201, "a\x00b", "job\n"):  # a position after no job
        with pytest.raises(InvalidCursor):
            decode_cursor(encode_cursor(Cursor(at, no_job_id)))
    before_epoch = Cursor(datetime(1960, 1, 1, tzinfo=UTC) + timedelta(microseconds=1), "x")
    assert decode_cursor(encode_cursor(before_epoch)) == before_epoch


@pytest.mark.parametrize(
    "token", ["", "!!!", "e30", "eyJ0IjogdHJ1ZSwgImkiOiAiYSJ9", "x" * 513, "bnVsbA"]
)
def test_bad_cursors_are_refused(token):
    with pytest.raises(InvalidCursor):
        decode_cursor(token)


def test_result_links_sign_only_the_uploads_own_outputs():
    import boto3
    from botocore.config import Config

    s3 = boto3.client(
        "s3",
        config=Config(signature_version="s3v4"),
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    result = {
        "manifest_key": "processed/user-a/up1/manifest.json",
        "thumbnail_key": "processed/user-a/up1/thumbnail.jpg",
        "other_key": "processed/user-b/up9/manifest.json",  # another user's output
        "source_key": "uploads/user-a/up1/file.bin",  # not an output
        "sha256": "processed/user-a/up1/not-a-key-field",
    }
    links = result_links(s3, "bkt", "user-a", "up1", result, 60)
    assert [link["name"] for link in links] == ["manifest.json", "thumbnail.jpg"]
    assert "processed/user-a/up1/manifest.json" in links[0]["url"]
    assert "X-Amz-Expires=60" in links[0]["url"]
    assert result_links(s3, "bkt", "user-a", "up1", None, 60) == []


def test_presigned_urls_name_the_buckets_regional_host(monkeypatch):
    """Signed offline, no endpoint override (as in AWS): the global host would answer a new
    bucket outside us-east-1 with a 307 that a browser's CORS preflight cannot follow."""
    from offload import aws
    from offload.uploads import plan_parts, presign_parts, presign_post

    monkeypatch.setattr(aws, "_CLIENTS", {})
    for name, value in {
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "secret",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    s3 = aws.s3_client()
    host = "https://offload-uploads.s3.eu-west-1.amazonaws.com/"
    assert presign_post(s3, "offload-uploads", "uploads/a/b/c.bin", "text/plain", 3, 60)[
        "url"
    ].startswith(host)
    plan = plan_parts(3)
    [part] = presign_parts(s3, "offload-uploads", "uploads/a/b/c.bin", "mpu", plan, [1], 60)
    assert part["url"].startswith(host + "uploads/a/b/c.bin?")


def test_outputs_count_as_archived_from_the_archive_age_on():
    from offload.uploads import outputs_archived

    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert not outputs_archived(now - timedelta(days=89, hours=23), 90, now)
    assert outputs_archived(now - timedelta(days=90), 90, now)
    assert not outputs_archived(now - timedelta(days=900), 0, now)  # 0: never archived
    assert not outputs_archived(None, 90, now)  # not finished


def test_job_list_parameters_are_checked_before_any_query():
    """``GET /jobs``: the page size and the cursor are the service's to check, and a bad one
    is refused before the database is asked anything (no queries object here to ask)."""
    cursor = Cursor(datetime(2026, 12, 6, tzinfo=UTC), "inspect-abc")
    assert parse_list_params(None, None) == (20, None)
    assert parse_list_params("100", encode_cursor(cursor)) == (100, cursor)
    for limit in ("0", "101", "-1", "1.5", "", "10000", " 5"):
        with pytest.raises(InvalidRequest, match=r"limit must be an integer within 1\.\.100"):
            parse_list_params(limit, None)
    service = JobService(Settings(), None, None, s3=None, queue=None)  # type: ignore[arg-type]
    for limit, token, field in (("0", None, "limit"), (None, "forged", "cursor")):
        with pytest.raises(InvalidRequest) as refused:
            asyncio.run(service.page("user-a", limit, token))
        assert refused.value.field == field
