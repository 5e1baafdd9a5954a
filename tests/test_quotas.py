"""The quota decision (offload/quotas.py) over a given usage: which limit, what the user is told,
and the Retry-After each limit gives. The store and the API route: test_upload_quotas.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from offload.quotas import (
    OPEN_RETRY_MAX_S,
    OpenUpload,
    QuotaCheck,
    QuotaExceeded,
    Usage,
    format_bytes,
)
from offload.settings import GiB, Settings, UploadQuota
from offload.uploads import InvalidRequest

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
MiB = 1 << 20


def check(size: int = MiB, **limits: int) -> QuotaCheck:
    quota = UploadQuota(
        open_uploads=limits.get("open_uploads", 0),
        bytes_in_flight=limits.get("bytes_in_flight", 0),
        uploads_per_hour=limits.get("uploads_per_hour", 0),
    )
    return QuotaCheck(
        tier="standard", quota=quota, size=size, single_open_s=900, multipart_open_s=86_400
    )


def opened(*expires_in_s: int, size: int = MiB) -> tuple[OpenUpload, ...]:
    return tuple(OpenUpload(size, NOW + timedelta(seconds=s)) for s in expires_in_s)


def refusal(quota: QuotaCheck, usage: Usage) -> QuotaExceeded:
    with pytest.raises(QuotaExceeded) as caught:
        quota.admit(usage)
    return caught.value


def test_under_every_limit_is_admitted() -> None:
    quota = check(open_uploads=3, bytes_in_flight=10 * MiB, uploads_per_hour=5)
    quota.admit(Usage(NOW, opened(100, 200)))


def test_zero_means_no_limit() -> None:
    check(size=GiB).admit(Usage(NOW, opened(*range(1, 1000), size=GiB), hour_filled_by=NOW))


def test_the_last_open_slot_is_refused_until_the_earliest_open_upload_expires() -> None:
    exceeded = refusal(check(open_uploads=3), Usage(NOW, opened(600, 120, 300)))
    assert exceeded.status == 429
    assert exceeded.quota == "openUploads" and exceeded.limit == 3
    assert exceeded.retry_after_s == 120
    assert "3 uploads open" in exceeded.message and "standard plan allows 3" in exceeded.message


def test_over_a_lowered_open_limit_waits_for_enough_to_expire() -> None:
    # 4 open, limit 2: three must expire for one slot (the third earliest expiry).
    exceeded = refusal(check(open_uploads=2), Usage(NOW, opened(50, 10, 30, 70)))
    assert exceeded.retry_after_s == 50


def test_the_open_hint_is_capped() -> None:
    exceeded = refusal(check(open_uploads=1), Usage(NOW, opened(7 * 86_400)))
    assert exceeded.retry_after_s == OPEN_RETRY_MAX_S


def test_bytes_in_flight_count_the_new_upload() -> None:
    quota = check(size=4 * MiB, bytes_in_flight=10 * MiB)
    quota.admit(Usage(NOW, opened(100, 200, size=3 * MiB)))  # 6 + 4 = 10: at the limit
    exceeded = refusal(quota, Usage(NOW, opened(100, 200, 300, size=3 * MiB)))  # 9 + 4
    assert exceeded.quota == "bytesInFlight" and exceeded.limit == 10 * MiB
    # One 3 MiB upload expiring (the earliest, in 100 s) leaves 6 + 4 = 10.
    assert exceeded.retry_after_s == 100
    assert "9 MiB" in exceeded.message and "4 MiB" in exceeded.message
    assert "10 MiB the standard plan allows in flight" in exceeded.message


def test_bytes_in_flight_wait_for_as_many_uploads_as_needed() -> None:
    quota = check(size=5 * MiB, bytes_in_flight=10 * MiB)
    exceeded = refusal(quota, Usage(NOW, opened(30, 90, 60, size=3 * MiB)))  # 9 + 5
    assert exceeded.retry_after_s == 60  # the two earliest (30 s, 60 s) must expire


def test_an_upload_larger_than_the_bytes_limit_is_a_400() -> None:
    quota = check(size=11 * MiB, bytes_in_flight=10 * MiB)
    with pytest.raises(InvalidRequest) as caught:
        quota.admit(Usage(NOW, ()))
    assert caught.value.field == "size" and caught.value.status == 400
    assert "standard plan" in caught.value.message


def test_uploads_per_hour_wait_until_the_oldest_counted_leaves_the_window() -> None:
    oldest = NOW - timedelta(minutes=50)
    exceeded = refusal(check(uploads_per_hour=5), Usage(NOW, (), hour_filled_by=oldest))
    assert exceeded.quota == "uploadsPerHour" and exceeded.limit == 5
    assert exceeded.retry_after_s == 600
    assert "600 seconds" in exceeded.message


def test_retry_after_is_at_least_one_second() -> None:
    almost = NOW - timedelta(minutes=60) + timedelta(milliseconds=10)
    assert (
        refusal(check(uploads_per_hour=1), Usage(NOW, (), hour_filled_by=almost)).retry_after_s == 1
    )


def test_the_body_names_the_limit() -> None:
    exceeded = refusal(check(open_uploads=1), Usage(NOW, opened(5)))
    assert exceeded.body() == {
        "message": exceeded.message,
        "quota": "openUploads",
        "limit": 1,
        "tier": "standard",
        "retryAfter": 5,
    }


def test_the_check_takes_the_tier_limits_and_windows_from_the_settings() -> None:
    settings = Settings.from_env(
        {
            "OFFLOAD_QUOTA_PLUS_OPEN_UPLOADS": "7",
            "OFFLOAD_QUOTA_STANDARD_UPLOADS_PER_HOUR": "0",
            "OFFLOAD_URL_EXPIRY_S": "60",
            "OFFLOAD_MULTIPART_ABORT_AFTER_DAYS": "2",
        }
    )
    plus = QuotaCheck.for_request(settings, "plus", 1)
    assert plus.quota.open_uploads == 7
    assert (plus.single_open_s, plus.multipart_open_s) == (60, 2 * 86_400)
    standard = QuotaCheck.for_request(settings, "standard", 1)
    assert standard.quota == UploadQuota(20, 100 * GiB, 0)
    assert QuotaCheck.for_request(settings, "unknown", 1).quota == standard.quota


@pytest.mark.parametrize(
    ("count", "text"),
    [(5, "5 bytes"), (2048, "2 KiB"), (3 * MiB, "3 MiB"), (int(1.5 * GiB), "1.5 GiB")],
)
def test_sizes_in_user_terms(count: int, text: str) -> None:
    assert format_bytes(count) == text
