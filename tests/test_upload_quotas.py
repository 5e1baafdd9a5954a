"""Per-user upload quotas on real PostgreSQL: the store's count and insert under the owner's
lock (concurrent creates never share the last slot), which uploads count, and the API route's
429 with ``Retry-After`` and a JSON body, per Cognito group tier."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import psycopg
import pytest

from offload.db.pool import create_pool
from offload.db.uploads import UploadStore
from offload.quotas import QuotaCheck, QuotaExceeded
from offload.settings import UploadQuota
from offload.uploads import MiB, UploadService
from tests.support.apigw import call, configure

SUB = "user-a"
GOOD = {"filename": "photo.jpg", "size": 1234, "contentType": "image/jpeg"}


def quota_check(size: int = 100, **limits: int) -> QuotaCheck:
    return QuotaCheck(
        tier="standard",
        quota=UploadQuota(
            limits.get("open_uploads", 0),
            limits.get("bytes_in_flight", 0),
            limits.get("uploads_per_hour", 0),
        ),
        size=size,
        single_open_s=900,
        multipart_open_s=86_400,
    )


def sql(settings, statement: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(
        settings.database_url, options=f"-c search_path={settings.database_schema}"
    ) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


async def create_rows(
    store: UploadStore, owner: str, count: int, check: QuotaCheck, prefix: str
) -> list[BaseException | object]:
    async def one(index: int) -> object:
        return await store.create(
            upload_id=f"{prefix}{index}",
            owner=owner,
            bucket="b",
            key=f"uploads/{owner}/{prefix}{index}/f",
            filename="f",
            content_type="text/plain",
            size_announced=check.size,
            quota=check,
        )

    return await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)


@pytest.mark.parametrize("limit", ["open_uploads", "bytes_in_flight", "uploads_per_hour"])
def test_concurrent_creates_never_share_the_last_slot(settings, limit):
    """10 creates at once, each on its own connection, with room for 3: exactly 3 rows, and
    7 refusals. Without the per-owner lock, several read the same count before any insert."""
    asyncio.run(race(settings, limit))


async def race(settings, limit: str) -> None:
    pool = create_pool(settings.database_url, settings.database_schema, max_size=10)
    await pool.open(wait=True)
    try:
        await pool.wait()
        store = UploadStore(pool)
        room = {"open_uploads": 3, "bytes_in_flight": 300, "uploads_per_hour": 3}[limit]
        check = quota_check(size=100, **{limit: room})
        for round_ in range(3):  # a few rounds: one lucky interleaving proves nothing
            owner = f"racer-{round_}"
            results = await create_rows(store, owner, 10, check, f"r{round_}-")
            refusals = [r for r in results if isinstance(r, QuotaExceeded)]
            errors = [r for r in results if isinstance(r, BaseException) and r not in refusals]
            assert not errors, errors
            assert len(refusals) == 7, results
            (rows,) = sql(settings, "SELECT count(*) FROM uploads WHERE owner = %s", (owner,))
            assert rows == (3,)
    finally:
        await pool.close()


def test_which_uploads_count(settings):
    """Open: pending and still usable (a single upload until its URL expires, a multipart
    one until the lifecycle rule aborts it). Per hour: every upload created in the hour."""
    asyncio.run(counted(settings))


async def counted(settings) -> None:
    pool = create_pool(settings.database_url, settings.database_schema, max_size=2)
    await pool.open(wait=True)
    try:
        store = UploadStore(pool)
        everything = quota_check(open_uploads=100)
        await create_rows(store, SUB, 6, everything, "u")
        sql(settings, "UPDATE uploads SET state = 'aborted' WHERE id = 'u0'")
        sql(settings, "UPDATE uploads SET state = 'queued' WHERE id = 'u1'")
        # u2: a single upload whose POST expired; u3: a multipart upload of 2 h ago (open);
        # u4: a multipart upload past the lifecycle rule; u5: pending, new.
        sql(
            settings,
            "UPDATE uploads SET created_at = now() - interval '20 minutes' WHERE id = 'u2'",
        )
        sql(
            settings,
            "UPDATE uploads SET created_at = now() - interval '2 hours', multipart_upload_id = 'm'"
            " WHERE id = 'u3'",
        )
        sql(
            settings,
            "UPDATE uploads SET created_at = now() - interval '2 days', multipart_upload_id = 'm'"
            " WHERE id = 'u4'",
        )
        usage = await store.usage(SUB, everything)
        assert sorted(upload.size for upload in usage.open) == [100, 100]  # u3, u5
        expiries = sorted(upload.expires_at - usage.now for upload in usage.open)
        assert timedelta(minutes=14) < expiries[0] <= timedelta(minutes=15)  # u5: 900 s
        assert timedelta(hours=21) < expiries[1] <= timedelta(hours=22)  # u3: 24 h - 2 h

        # In the last hour: u0, u1, u2, u5 (aborted and completed ones too). The 4th newest
        # fills a window of 4, the oldest of them is u2 (20 minutes ago).
        hourly = await store.usage(SUB, quota_check(uploads_per_hour=4))
        assert hourly.hour_filled_by is not None
        assert timedelta(minutes=19) < hourly.now - hourly.hour_filled_by <= timedelta(minutes=21)
        assert (await store.usage(SUB, quota_check(uploads_per_hour=5))).hour_filled_by is None
        other = await store.usage("user-b", everything)
        assert other.open == () and other.hour_filled_by is None
    finally:
        await pool.close()


# --- the API route ----------------------------------------------------------------------------


def claims(sub: str, groups: str | None) -> dict[str, str]:
    made = {"sub": sub, "token_use": "id", "aud": "exampleclientid"}
    if groups is not None:
        made["cognito:groups"] = groups
    return made


def assert_over_quota(response, quota: str, tier: str) -> int:
    assert response.status == 429, (response.status, response.body)
    assert response.headers["content-type"] == "application/json"
    retry_after = int(response.headers["retry-after"])
    assert retry_after >= 1
    body = response.body
    assert body["quota"] == quota and body["tier"] == tier
    assert body["retryAfter"] == retry_after
    assert isinstance(body["message"], str) and tier in body["message"]
    return retry_after


def test_open_uploads_over_quota_is_429_until_one_is_finished(lambda_env, settings, monkeypatch):
    configure(monkeypatch, OFFLOAD_QUOTA_STANDARD_OPEN_UPLOADS=2, OFFLOAD_URL_EXPIRY_S=300)
    first = call("POST", "/uploads", body=GOOD)
    assert first.status == 201, first.body
    assert call("POST", "/uploads", body=GOOD).status == 201
    refused = call("POST", "/uploads", body=GOOD)
    retry_after = assert_over_quota(refused, "openUploads", "standard")
    assert 295 <= retry_after <= 300  # the first upload's POST expires then
    assert refused.body["limit"] == 2
    assert "2 uploads open" in refused.message
    assert sql(settings, "SELECT count(*) FROM uploads") == [(2,)]
    # Another user has their own quota.
    assert call("POST", "/uploads", body=GOOD, sub="user-b").status == 201
    # Cancelling one frees its slot at once.
    assert call("DELETE", f"/uploads/{first.body['id']}").status == 200
    assert call("POST", "/uploads", body=GOOD).status == 201


def test_uploads_per_hour_over_quota_waits_for_the_oldest(lambda_env, settings, monkeypatch):
    configure(monkeypatch, OFFLOAD_QUOTA_STANDARD_UPLOADS_PER_HOUR=2)
    made = [call("POST", "/uploads", body=GOOD) for _ in range(2)]
    assert [m.status for m in made] == [201, 201]
    for upload in made:  # finished or not, they count for the hour
        assert call("DELETE", f"/uploads/{upload.body['id']}").status == 200
    sql(settings, "UPDATE uploads SET created_at = now() - interval '45 minutes'")
    refused = call("POST", "/uploads", body=GOOD)
    retry_after = assert_over_quota(refused, "uploadsPerHour", "standard")
    assert 895 <= retry_after <= 900  # the oldest leaves the hour in 15 minutes
    assert f"try again in {retry_after} seconds" in refused.message


def test_bytes_in_flight_over_quota_and_an_impossible_size(lambda_env, settings, monkeypatch):
    configure(monkeypatch, OFFLOAD_QUOTA_STANDARD_BYTES_IN_FLIGHT=3000)
    assert call("POST", "/uploads", body=GOOD).status == 201  # 1234 bytes
    refused = call("POST", "/uploads", body={**GOOD, "size": 2000})
    assert_over_quota(refused, "bytesInFlight", "standard")
    assert refused.body["limit"] == 3000
    too_big = call("POST", "/uploads", body={**GOOD, "size": 3001})
    assert too_big.status == 400 and too_big.body["field"] == "size"
    assert "retry-after" not in too_big.headers


def test_a_multipart_upload_over_quota_leaves_nothing_in_s3(
    lambda_env, settings, s3, bucket, monkeypatch
):
    configure(monkeypatch, OFFLOAD_SINGLE_UPLOAD_MAX_BYTES=1, OFFLOAD_QUOTA_STANDARD_OPEN_UPLOADS=1)
    big = {"filename": "big.mp4", "size": 12 * MiB, "contentType": "video/mp4"}
    assert call("POST", "/uploads", body=big).status == 201
    assert_over_quota(call("POST", "/uploads", body=big), "openUploads", "standard")
    assert len(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1


@pytest.mark.parametrize(
    ("groups", "tier", "allowed"),
    [
        (None, "standard", 1),
        ("plus", "plus", 3),
        ("operators", "standard", 1),
        ("[plus operators]", "plus", 3),
        ("Plus", "standard", 1),
        ("plus" * 10_000, "standard", 1),
    ],
    ids=["no-group", "plus", "operators", "http-api-shape", "wrong-case", "hostile"],
)
def test_the_tier_comes_from_the_groups_claim(
    lambda_env, settings, monkeypatch, groups, tier, allowed
):
    configure(monkeypatch, OFFLOAD_QUOTA_STANDARD_OPEN_UPLOADS=1, OFFLOAD_QUOTA_PLUS_OPEN_UPLOADS=3)
    who = claims("user-g", groups)
    for _ in range(allowed):
        created = call("POST", "/uploads", body=GOOD, claims=who)
        assert created.status == 201, created.body
    assert_over_quota(call("POST", "/uploads", body=GOOD, claims=who), "openUploads", tier)


@pytest.mark.parametrize("groups", [["plus"], {"plus": 1}, 7, None])
def test_a_groups_claim_of_another_type_is_no_error(lambda_env, settings, monkeypatch, groups):
    configure(monkeypatch, OFFLOAD_QUOTA_STANDARD_OPEN_UPLOADS=5)
    who = {"sub": "user-h", "cognito:groups": groups}
    assert call("POST", "/uploads", body=GOOD, claims=who).status == 201


def test_a_multipart_upload_over_quota_is_refused_before_s3_is_asked(settings, s3, bucket):
    """The quota is read before the S3 multipart upload is created (and checked again with the
    insert): an over-quota request costs S3 nothing, not a create and an abort."""
    created: list[str] = []
    s3.meta.events.register(
        "before-call.s3.CreateMultipartUpload", lambda **_: created.append("create")
    )
    settings = replace(
        settings,
        upload_bucket=bucket,
        single_upload_max_bytes=1,
        quota_standard=UploadQuota(open_uploads=1, bytes_in_flight=0, uploads_per_hour=0),
    )
    big = {"filename": "big.mp4", "size": 12 * MiB, "contentType": "video/mp4"}

    async def scenario() -> None:
        pool = create_pool(settings.database_url, settings.database_schema, max_size=1)
        await pool.open(wait=True)
        try:
            service = UploadService(settings, s3, UploadStore(pool))
            await service.create(SUB, big)
            assert created == ["create"]
            with pytest.raises(QuotaExceeded):
                await service.create(SUB, big)
            assert created == ["create"]
        finally:
            await pool.close()

    asyncio.run(scenario())
