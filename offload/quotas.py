"""Per-user upload quotas: how many uploads a user may have open at once, how many bytes those
may announce, and how many uploads they may create per hour (limits per tier:
``Settings.upload_quota``, docs/settings.md).

An upload is *open* while it is ``pending`` and can still receive bytes: a single upload until
its presigned POST expires (``url_expiry_s`` after it was created), a multipart upload until
the bucket's lifecycle rule aborts it (``multipart_abort_after_days``). Completing or aborting
it (``DELETE /uploads/{id}``) closes it at once. *Bytes in flight* are the announced sizes of
the open uploads. *Uploads per hour* counts every upload created in the last hour, whatever
became of it.

The decision is pure (:meth:`QuotaCheck.admit` over a :class:`Usage`); the store reads the
usage and inserts the new row in one transaction under a per-owner lock
(``offload.db.uploads``), so two concurrent requests can never both take the last slot.
Over quota is 429 with ``Retry-After``: for uploads per hour, when the upload that fills the
window leaves it; for open uploads and bytes, when enough open uploads expire by themselves,
at most :data:`OPEN_RETRY_MAX_S` (finishing or cancelling one frees its share at once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from offload.uploads import InvalidRequest, RequestError

if TYPE_CHECKING:
    from offload.settings import Settings, UploadQuota

HOUR = timedelta(hours=1)
# The longest Retry-After for open uploads and bytes in flight: the user frees a slot by
# finishing or cancelling an upload, which no hint can predict; a client polls this often.
OPEN_RETRY_MAX_S = 900


class QuotaExceeded(RequestError):
    """The caller is over one of their tier's limits (429); ``retry_after_s`` says when
    trying again may succeed (``Retry-After``)."""

    status = 429

    def __init__(self, message: str, *, quota: str, limit: int, tier: str, retry_after_s: int):
        super().__init__(message)
        self.quota = quota
        self.limit = limit
        self.tier = tier
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, object]:
        return {
            "message": self.message,
            "quota": self.quota,
            "limit": self.limit,
            "tier": self.tier,
            "retryAfter": self.retry_after_s,
        }


@dataclass(frozen=True)
class OpenUpload:
    size: int
    expires_at: datetime


@dataclass(frozen=True)
class Usage:
    """What a user has, read at ``now`` (the database's clock)."""

    now: datetime
    open: tuple[OpenUpload, ...]
    # Created-at of the upload that fills the hourly window: the ``uploads_per_hour``-th newest
    # of the last hour; None while the user created fewer (or there is no hourly limit).
    hour_filled_by: datetime | None = None


def format_bytes(count: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}".replace(".0 ", " ")
    return f"{count} bytes"


def _seconds_until(moment: datetime, now: datetime, cap: int) -> int:
    return max(1, min(cap, math.ceil((moment - now).total_seconds())))


@dataclass(frozen=True)
class QuotaCheck:
    """One create request against its caller's tier quota."""

    tier: str
    quota: UploadQuota
    size: int
    single_open_s: int
    multipart_open_s: int

    @classmethod
    def for_request(cls, settings: Settings, tier: str, size: int) -> QuotaCheck:
        return cls(
            tier=tier,
            quota=settings.upload_quota(tier),
            size=size,
            single_open_s=settings.url_expiry_s,
            multipart_open_s=settings.multipart_abort_after_days * 86_400,
        )

    def check_size(self) -> None:
        """An upload larger than the tier's bytes in flight can never be admitted: a 400 (like
        any size limit), not a 429 that no wait would lift."""
        limit = self.quota.bytes_in_flight
        if limit and self.size > limit:
            raise InvalidRequest(
                f"size must be at most {limit} bytes ({format_bytes(limit)}) on the {self.tier}"
                " plan",
                field="size",
            )

    def admit(self, usage: Usage) -> None:
        """Raise :class:`QuotaExceeded` when this upload would go over a limit."""
        self.check_size()
        quota = self.quota
        expiries = sorted(upload.expires_at for upload in usage.open)
        if quota.open_uploads and len(expiries) >= quota.open_uploads:
            # Open uploads expiring, earliest first, until one fewer than the limit is open.
            frees_at = expiries[len(expiries) - quota.open_uploads]
            raise QuotaExceeded(
                f"you have {len(expiries)} uploads open; the {self.tier} plan allows"
                f" {quota.open_uploads} at once: finish or cancel one, or try again later",
                quota="openUploads",
                limit=quota.open_uploads,
                tier=self.tier,
                retry_after_s=_seconds_until(frees_at, usage.now, OPEN_RETRY_MAX_S),
            )
        in_flight = sum(upload.size for upload in usage.open)
        if quota.bytes_in_flight and in_flight + self.size > quota.bytes_in_flight:
            remaining = in_flight
            frees_at = usage.now
            for upload in sorted(usage.open, key=lambda upload: upload.expires_at):
                if remaining + self.size <= quota.bytes_in_flight:
                    break
                remaining -= upload.size
                frees_at = upload.expires_at
            raise QuotaExceeded(
                f"your open uploads announce {format_bytes(in_flight)}; with this one"
                f" ({format_bytes(self.size)}) that is more than the"
                f" {format_bytes(quota.bytes_in_flight)} the {self.tier} plan allows in flight:"
                " finish or cancel an upload, or try again later",
                quota="bytesInFlight",
                limit=quota.bytes_in_flight,
                tier=self.tier,
                retry_after_s=_seconds_until(frees_at, usage.now, OPEN_RETRY_MAX_S),
            )
        if quota.uploads_per_hour and usage.hour_filled_by is not None:
            wait = _seconds_until(usage.hour_filled_by + HOUR, usage.now, int(HOUR.total_seconds()))
            raise QuotaExceeded(
                f"you created {quota.uploads_per_hour} uploads in the last hour, the most the"
                f" {self.tier} plan allows: try again in {wait} seconds",
                quota="uploadsPerHour",
                limit=quota.uploads_per_hour,
                tier=self.tier,
                retry_after_s=wait,
            )
