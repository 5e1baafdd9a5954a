"""The caller from the authorizer's claims (offload/caller.py): the ``cognito:groups`` claim in
each shape API Gateway hands it on, and hostile values, which cost a tier but never give one."""

from __future__ import annotations

from typing import Any

import pytest

from offload.caller import MAX_GROUPS_CLAIM_CHARS, Caller, Tier, parse_groups
from offload_local.apigw import authorizer_claims

SUB = "6f1c2a4e-93b1-4a57-8d0e-4c1f2b3a5d6e"


@pytest.mark.parametrize(
    ("raw", "groups"),
    [
        ("plus", {"plus"}),
        ("plus,operators", {"plus", "operators"}),  # REST API: the list joined with commas
        ("[plus operators]", {"plus", "operators"}),  # HTTP API JWT authorizer
        ("[plus]", {"plus"}),
        (" plus , operators ", {"plus", "operators"}),
        (["plus", "operators"], {"plus", "operators"}),  # a real list (direct invocation)
        ("standard", {"standard"}),
        ("", set()),
        ("[]", set()),
    ],
)
def test_groups_in_each_shape_api_gateway_passes_them(raw: Any, groups: set[str]) -> None:
    assert parse_groups(raw) == groups


@pytest.mark.parametrize(
    "raw",
    [
        None,
        7,
        True,
        {"plus": True},
        "Plus",  # Cognito group names are case-sensitive
        "PLUS",
        "pluss",
        "plus-extra",
        "[[plus]]",
        '["plus"]',  # JSON is not a shape API Gateway uses
        "plus\x00",
        "\u0440lus",  # a Cyrillic look-alike of the first letter
        "not-a-group,other",
        [["plus"]],
        [7, None, {"x": 1}],
        "x," * (MAX_GROUPS_CLAIM_CHARS // 2) + "plus",  # longer than any real claim
    ],
    ids=lambda raw: repr(raw)[:30],
)
def test_hostile_or_unknown_values_give_no_group(raw: Any) -> None:
    assert parse_groups(raw) == frozenset()


def test_unknown_names_beside_known_ones_are_dropped() -> None:
    assert parse_groups("admins,plus,root") == {"plus"}


@pytest.mark.parametrize(
    ("groups", "tier"),
    [
        (None, Tier.STANDARD),  # in no group
        ("operators", Tier.STANDARD),  # a role, not a tier
        ("standard", Tier.STANDARD),
        ("plus", Tier.PLUS),
        ("standard,plus", Tier.PLUS),  # the higher tier wins
        ("plus,operators", Tier.PLUS),
        ("Plus", Tier.STANDARD),
    ],
)
def test_tier_from_groups(groups: str | None, tier: Tier) -> None:
    claims = {"sub": SUB} | ({"cognito:groups": groups} if groups is not None else {})
    caller = Caller.from_claims(claims)
    assert caller is not None
    assert caller.sub == SUB
    assert caller.tier is tier


def test_operators_is_a_role() -> None:
    caller = Caller.from_claims({"sub": SUB, "cognito:groups": "plus,operators"})
    assert caller is not None and caller.operator and caller.groups == {"plus", "operators"}
    plain = Caller.from_claims({"sub": SUB, "cognito:groups": "plus"})
    assert plain is not None and not plain.operator


@pytest.mark.parametrize(
    "claims",
    [None, "sub", [SUB], {}, {"sub": None}, {"sub": 7}, {"sub": "a/b"}, {"sub": ""}],
    ids=repr,
)
def test_no_caller_without_a_usable_sub(claims: Any) -> None:
    assert Caller.from_claims(claims) is None


def test_the_local_gateway_passes_groups_as_api_gateway_does() -> None:
    """The local gateway's authorizer hands the token's list on as the REST API does (one
    string, commas), and the caller reads it back."""
    claims = authorizer_claims({"sub": SUB, "cognito:groups": ["plus", "operators"]})
    assert claims["cognito:groups"] == "plus,operators"
    caller = Caller.from_claims(claims)
    assert caller is not None and caller.groups == {"plus", "operators"}
