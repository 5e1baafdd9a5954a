"""Cognito sign-in: ``InitiateAuth`` with ``USER_PASSWORD_AUTH`` for the app client (an unsigned
request: no AWS credentials needed), the ID token sent as ``Authorization``, refreshed once
with ``REFRESH_TOKEN_AUTH`` when the API answers 401. Or a given ID token, used as is."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from offload_cli.config import ClientConfig
from offload_cli.errors import AuthError, UnavailableError, UsageError

if TYPE_CHECKING:  # boto3-stubs' package for Cognito: in the dev venv only, never imported
    from mypy_boto3_cognito_idp import CognitoIdentityProviderClient
    from mypy_boto3_cognito_idp.literals import AuthFlowTypeType
    from mypy_boto3_cognito_idp.type_defs import AuthenticationResultTypeTypeDef

# Cognito's answers that mean "these credentials will not do": exit 3, not a retry.
_REFUSALS = {
    "NotAuthorizedException",
    "UserNotFoundException",
    "UserNotConfirmedException",
    "PasswordResetRequiredException",
    "ResourceNotFoundException",  # no such app client
    "InvalidParameterException",  # e.g. the client does not allow USER_PASSWORD_AUTH
    "InvalidUserPoolConfigurationException",
}


class StaticToken:
    """An ID token given by the caller (``--token`` / ``OFFLOAD_TOKEN``): never refreshed."""

    def __init__(self, token: str):
        self._token = token.removeprefix("Bearer ").strip()

    def token(self) -> str:
        return self._token

    def refresh(self, rejected: str) -> bool:
        return False

    describe = "the given token"


class CognitoSession:
    """A user signed in with username and password; :meth:`refresh` swaps the ID token for a
    new one (once per rejected token, shared by every thread that saw it rejected)."""

    describe = "Cognito"

    def __init__(self, config: ClientConfig, username: str, password: str):
        if not config.client_id:
            raise UsageError(
                "no Cognito app client id: give --client-id (or OFFLOAD_CLIENT_ID), or --site"
            )
        self.config = config
        self._client_id: str = config.client_id
        self.username = username
        self._lock = threading.Lock()
        self._client = _cognito_client(config)
        result = self._initiate("USER_PASSWORD_AUTH", {"USERNAME": username, "PASSWORD": password})
        self._id_token: str = result["IdToken"]
        self._refresh_token: str | None = result.get("RefreshToken")

    def token(self) -> str:
        return self._id_token

    def refresh(self, rejected: str) -> bool:
        """A new ID token unless another thread already replaced ``rejected``; False when
        there is no way to get one."""
        with self._lock:
            if self._id_token != rejected:
                return True
            if not self._refresh_token:
                return False
            try:
                result = self._initiate(
                    "REFRESH_TOKEN_AUTH", {"REFRESH_TOKEN": self._refresh_token}
                )
            except AuthError:
                self._refresh_token = None
                return False
            self._id_token = result["IdToken"]
            return True

    def _initiate(
        self, flow: AuthFlowTypeType, parameters: dict[str, str]
    ) -> AuthenticationResultTypeTypeDef:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self._client.initiate_auth(
                ClientId=self._client_id, AuthFlow=flow, AuthParameters=parameters
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code, message = error.get("Code", "?"), error.get("Message", str(exc))
            if code in _REFUSALS or exc.response.get("ResponseMetadata", {}).get(
                "HTTPStatusCode", 500
            ) in (400, 401, 403):
                raise AuthError(f"sign-in refused: {message} ({code})") from exc
            raise UnavailableError(f"sign-in service error: {message} ({code})") from exc
        except BotoCoreError as exc:
            raise UnavailableError(f"cannot reach the sign-in service: {exc}") from exc
        result = answer.get("AuthenticationResult")
        if not result or "IdToken" not in result:
            challenge = answer.get("ChallengeName", "a challenge")
            raise AuthError(
                f"Cognito asks for {challenge}, which the CLI does not support; "
                "sign in once on the web page or ask an administrator to set a permanent password"
            )
        return result


def _cognito_client(config: ClientConfig) -> CognitoIdentityProviderClient:
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    region = config.region
    if not region:
        raise UsageError("no AWS region for Cognito: give --region (or OFFLOAD_REGION), or --site")
    return boto3.session.Session().client(
        "cognito-idp",
        region_name=region,
        endpoint_url=config.cognito_endpoint,
        config=Config(
            signature_version=UNSIGNED,
            retries={"max_attempts": 4, "mode": "standard"},
            connect_timeout=10,
            read_timeout=30,
        ),
    )
