"""Job priorities: small uploads first, and the paid tier ahead of the standard one.

bullmq's rule: priority 1 is the highest, larger numbers run later, and 0 means "no priority"
(the plain wait list, which ``moveToActive`` empties *before* it looks at any prioritised
job). So every job a producer adds gets a priority of at least 1 from :func:`upload_priority`:
a job added without one would jump ahead of every prioritised upload job. Node BullMQ refuses
priorities above 2^21 (:data:`MAX_PRIORITY`); bullmq-py does not check, but the scripts score a
prioritised job ``priority * 2^32 + counter`` in a Lua double, exact only below 2^53, so the
same bound holds. Ours stay far below it (two per size band, at most 16 bands).

The size bands come from ``OFFLOAD_PRIORITY_SIZE_BANDS`` (:func:`parse_size_bands`): upper
bounds, smallest first; an upload falls in the first band whose bound holds its size, or in
the last, open-ended one. Within a band a ``plus`` upload runs before a ``standard`` one; a
smaller band runs before a larger one whatever the tier (a paid user's 40 GiB video does not
hold back everybody's photos, it only goes ahead of other 40 GiB videos). Within one priority
bullmq keeps the order of adding (FIFO).
"""

from __future__ import annotations

import itertools
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from offload.settings import Settings

# Node BullMQ refuses a job whose priority exceeds this (bullmq-py does not check; see above).
MAX_PRIORITY = 2**21
# More bands would not order anything better and would only make the priority list long.
MAX_BANDS = 16
PLUS = "plus"

_UNITS = {"": 1, "B": 1, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}
_SIZE = re.compile(r"\s*(\d{1,15})\s*([KMGT]?I?B)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"16MiB"``, ``"4 GiB"``, ``"1048576"`` (bytes) -> bytes. Binary units only: a deployer
    who writes MB and means MiB would otherwise be off by 5 %, silently."""
    match = _SIZE.fullmatch(text)
    unit = (match.group(2) or "").upper() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"{text.strip()!r} is not a size (bytes, or a number with KiB/MiB/GiB/TiB)"
        )
    return int(match.group(1)) * _UNITS[unit]


def parse_size_bands(text: str) -> tuple[int, ...]:
    """The band bounds of ``OFFLOAD_PRIORITY_SIZE_BANDS``: comma-separated sizes, strictly
    increasing, at most :data:`MAX_BANDS`; ``none``: one band (no ordering by size)."""
    if text.strip().lower() == "none":
        return ()
    bounds = tuple(parse_size(part) for part in text.split(","))
    if len(bounds) > MAX_BANDS:
        raise ValueError(f"at most {MAX_BANDS} bounds, got {len(bounds)}")
    if any(bound < 1 for bound in bounds):
        raise ValueError("every bound must be at least 1 byte")
    if any(later <= earlier for earlier, later in itertools.pairwise(bounds)):
        raise ValueError("bounds must be strictly increasing")
    return bounds


def size_band(bounds: tuple[int, ...], size: int | None) -> int:
    """The band of an upload of ``size`` bytes: 0 for the smallest; an unknown size counts as
    the largest (it cannot claim to be small)."""
    if size is None:
        return len(bounds)
    return next((band for band, bound in enumerate(bounds) if size <= bound), len(bounds))


def upload_priority(settings: Settings, size: int | None, tier: str | None) -> int:
    """The bullmq priority of a job of an upload of ``size`` bytes made by a ``tier`` user
    (``offload.caller.Tier``; None, from rows older than the tier column, or any other value:
    standard). 1 is the first to run."""
    band = size_band(settings.priority_size_bands, size)
    return 1 + 2 * band + (0 if tier == PLUS else 1)


def all_priorities(settings: Settings) -> range:
    """Every priority :func:`upload_priority` can give (the queue metrics look at each)."""
    return range(1, 2 * (len(settings.priority_size_bands) + 1) + 1)
