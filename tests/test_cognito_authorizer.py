"""The local gateway's Cognito authorizer (offload_local/cognito_auth.py) on tokens that are
signed by the pool's key but hostile in their claims: each is a 401, never an exception."""

from __future__ import annotations

import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from offload_local.cognito_auth import CognitoAuthorizer, Unauthorized

POOL = "us-east-1_pool"
CLIENT = "client-1"


@pytest.fixture(scope="module")
def key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "k1"})


@pytest.fixture
def authorizer(key: RSAKey) -> CognitoAuthorizer:
    made = CognitoAuthorizer("http://127.0.0.1:9", "us-east-1", POOL, {CLIENT})
    made._keys = KeySet([key])  # the pool's JWKS, without the HTTP fetch from moto
    return made


def token(key: RSAKey, **changes: Any) -> str:
    claims = {
        "iss": f"https://cognito-idp.us-east-1.amazonaws.com/{POOL}",
        "sub": "user-a",
        "aud": CLIENT,
        "token_use": "id",
        "exp": int(time.time()) + 300,
    } | changes
    return jwt.encode({"alg": "RS256", "kid": "k1"}, claims, key)


def test_a_good_id_token_gives_its_claims(authorizer: CognitoAuthorizer, key: RSAKey) -> None:
    assert authorizer.claims(f"Bearer {token(key)}")["sub"] == "user-a"


@pytest.mark.parametrize(
    "aud",
    [[CLIENT], {"client": CLIENT}, 7, None, "client-2"],
    ids=["list", "object", "number", "null", "other-client"],
)
def test_an_audience_that_is_not_one_of_the_clients_is_401(
    authorizer: CognitoAuthorizer, key: RSAKey, aud: Any
) -> None:
    with pytest.raises(Unauthorized):
        authorizer.claims(f"Bearer {token(key, aud=aud)}")
