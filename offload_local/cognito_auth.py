"""What API Gateway's Cognito user-pool authorizer does with the ``Authorization`` header:
verify the token's signature against the pool's JWKS, its issuer, expiry and use, and hand the
claims to the Lambda. Here the JWKS comes from moto's pool endpoint."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet


class Unauthorized(Exception):
    """API Gateway's 401 ``{"message": "Unauthorized"}``; the reason is only logged."""


class CognitoAuthorizer:
    def __init__(self, endpoint: str, region: str, user_pool_id: str, client_ids: set[str]):
        # moto signs with AWS's issuer, whatever endpoint served the token.
        self.issuer = f"https://cognito-idp.{region}.amazonaws.com/{user_pool_id}"
        self._jwks_url = f"{endpoint.rstrip('/')}/{user_pool_id}/.well-known/jwks.json"
        self._client_ids = client_ids
        self._keys: KeySet | None = None
        self._lock = threading.Lock()

    def _key_set(self) -> KeySet:
        with self._lock:
            if self._keys is None:
                with urllib.request.urlopen(self._jwks_url, timeout=5) as answer:
                    self._keys = KeySet.import_key_set(json.load(answer))
            return self._keys

    def claims(self, header: str | None) -> dict[str, Any]:
        """The verified claims of the token in ``header`` (raw or ``Bearer``); an ID token of
        one of the pool's clients, like the REST API authorizer accepts without scopes."""
        if not header:
            raise Unauthorized("no Authorization header")
        token = header.removeprefix("Bearer ").strip()
        try:
            decoded = jwt.decode(token, self._key_set(), algorithms=["RS256"])
            jwt.JWTClaimsRegistry(
                now=int(time.time()),
                iss={"essential": True, "value": self.issuer},
                exp={"essential": True},
                sub={"essential": True},
                token_use={"essential": True, "value": "id"},
            ).validate(decoded.claims)
        except (JoseError, ValueError) as exc:
            raise Unauthorized(f"invalid token: {exc}") from exc
        audience = decoded.claims.get("aud")
        # A Cognito ID token's aud is one client id; a list (or anything unhashable) was a
        # TypeError here, a 502 where API Gateway answers 401.
        if not isinstance(audience, str) or audience not in self._client_ids:
            raise Unauthorized("token issued to another app client")
        return dict(decoded.claims)
