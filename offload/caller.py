"""Who is calling the API: the Cognito ``sub`` and the user pool groups, as the authorizer
handed them on, and the service tier the groups give.

Groups (created by ``stacks/auth.py``; an administrator puts a user in them, docs/deploy.md):

* ``plus``: the larger per-user quotas (``OFFLOAD_QUOTA_PLUS_*``);
* ``standard``: the default quotas; a user in no tier group is ``standard`` too;
* ``operators``: people who run the service (a role, not a tier: an operator's quotas are those
  of their tier group).

API Gateway's Cognito authorizer passes every claim as a *string*: a REST API joins the ID
token's ``cognito:groups`` list with commas (``"plus,operators"``), an HTTP API's JWT
authorizer writes it bracketed and space-separated (``"[plus operators]"``). Both are read,
and so is a real list (a direct invocation). The value comes from a token the authorizer
verified, but only the group names below mean anything here: every other name, and anything
malformed (too long, not a string, nested brackets), is ignored, never an error, so a strange
claim can cost a user their tier but never give one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from offload.keys import KEY_SEGMENT_ID

GROUPS_CLAIM = "cognito:groups"
OPERATORS = "operators"
# Longest claim value read: Cognito allows 100 groups per user of up to 128 characters.
MAX_GROUPS_CLAIM_CHARS = 100 * 129 + 2
_SEPARATORS = re.compile(r"[,\s]+")


class Tier(StrEnum):
    """The quota tier: the group a user is in, ``standard`` when in none."""

    STANDARD = "standard"
    PLUS = "plus"


# Tier groups, the highest first: a user in several gets the highest.
TIER_GROUPS: tuple[Tier, ...] = (Tier.PLUS, Tier.STANDARD)
KNOWN_GROUPS = frozenset({*TIER_GROUPS, OPERATORS})


def parse_groups(raw: Any) -> frozenset[str]:
    """The known group names in a ``cognito:groups`` claim value (see the module doc); empty
    for anything unreadable."""
    if isinstance(raw, (list, tuple)):
        names = [item for item in raw if isinstance(item, str)]
    elif isinstance(raw, str):
        if len(raw) > MAX_GROUPS_CLAIM_CHARS:
            return frozenset()
        text = raw.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        names = _SEPARATORS.split(text)
    else:
        return frozenset()
    # Exact names only (Cognito's are case-sensitive): "Plus" or " plus" is no group of ours.
    return frozenset(name for name in names if name in KNOWN_GROUPS)


def tier_of(groups: frozenset[str]) -> Tier:
    return next((tier for tier in TIER_GROUPS if tier in groups), Tier.STANDARD)


@dataclass(frozen=True)
class Caller:
    """The signed-in user a request acts for."""

    sub: str
    groups: frozenset[str] = frozenset()

    @property
    def tier(self) -> Tier:
        return tier_of(self.groups)

    @property
    def operator(self) -> bool:
        return OPERATORS in self.groups

    @classmethod
    def from_claims(cls, claims: Any) -> Caller | None:
        """The caller named by the authorizer's claims, or None without a usable ``sub`` (a
        Cognito sub is a UUID; it names key segments, so nothing else is accepted)."""
        if not isinstance(claims, Mapping):
            return None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not KEY_SEGMENT_ID.fullmatch(sub):
            return None
        return cls(sub=sub, groups=parse_groups(claims.get(GROUPS_CLAIM)))
