"""ElastiCache IAM authentication: the password of an IAM-enabled Redis user is a SigV4-presigned
``connect`` request, signed with the caller's own AWS credentials (the Lambda's or the ECS
task's role), valid 15 minutes.

redis-py asks the provider for credentials on every new connection (and bullmq's clients
reconnect on their own), so each connection gets a fresh token: ElastiCache closes IAM
connections after 12 hours, and a reconnection after that must not present an expired token.
Signing is local (no request leaves the process); only the role's credentials may be fetched,
and botocore caches and refreshes those.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

import botocore.session
from botocore.model import ServiceId
from botocore.signers import RequestSigner
from redis.credentials import CredentialProvider

TOKEN_LIFETIME_S = 900  # the longest ElastiCache accepts


class ElastiCacheIAMProvider(CredentialProvider):
    """``(user, token)`` for ``user`` on the replication group ``cache_id`` (IAM-enabled
    users have their id equal to their name, so ``user`` is both)."""

    def __init__(
        self,
        user: str,
        cache_id: str,
        *,
        region: str | None = None,
        session: botocore.session.Session | None = None,
    ) -> None:
        self.user = user
        self.cache_id = cache_id.lower()  # ElastiCache ids are lower case; so is the token's
        self.session = session or botocore.session.get_session()
        self.region = region or self.session.get_config_variable("region")
        if not self.region:
            raise ValueError("Redis IAM authentication needs an AWS region (AWS_DEFAULT_REGION)")

    def token(self) -> str:
        credentials = self.session.get_credentials()
        if credentials is None:
            raise RuntimeError("Redis IAM authentication found no AWS credentials")
        signer = RequestSigner(
            ServiceId("elasticache"),
            self.region,
            "elasticache",
            "v4",
            credentials,
            self.session.get_component("event_emitter"),
        )
        query = urlencode({"Action": "connect", "User": self.user})
        url: str = signer.generate_presigned_url(
            {
                "method": "GET",
                "url": f"https://{self.cache_id}/?{query}",
                "body": {},
                "headers": {},
                "context": {},
            },
            operation_name="connect",
            expires_in=TOKEN_LIFETIME_S,
            region_name=self.region,
        )
        # Signed as https://…; ElastiCache wants the request without its scheme.
        return url.removeprefix("https://")

    def get_credentials(self) -> tuple[str, str]:
        return self.user, self.token()

    async def get_credentials_async(self) -> tuple[str, str]:
        # Fetching the role's credentials (ECS container endpoint) may block: not on the loop.
        return await asyncio.to_thread(self.get_credentials)
