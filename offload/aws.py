"""AWS clients, one per process and endpoint (boto3 clients are thread-safe and reusable).

The endpoint override (``S3_ENDPOINT_URL`` and friends) points them at moto locally and in
tests; in AWS it is unset.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal, overload

if TYPE_CHECKING:  # boto3-stubs' per-service packages: in the dev venv only, never imported
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_secretsmanager import SecretsManagerClient

Service = Literal["s3", "secretsmanager", "cloudwatch", "rds", "events"]
_CLIENTS: dict[tuple[str, str | None], Any] = {}


@overload
def client(service: Literal["s3"], endpoint_url: str | None = None) -> S3Client: ...
@overload
def client(
    service: Literal["secretsmanager"], endpoint_url: str | None = None
) -> SecretsManagerClient: ...
@overload
def client(service: Literal["cloudwatch"], endpoint_url: str | None = None) -> CloudWatchClient: ...
@overload
def client(service: Literal["rds"], endpoint_url: str | None = None) -> Any: ...
@overload
def client(service: Literal["events"], endpoint_url: str | None = None) -> Any: ...
def client(service: Service, endpoint_url: str | None = None) -> Any:
    cached = _CLIENTS.get((service, endpoint_url))
    if cached is None:
        import boto3  # imported lazily: it costs ~100 ms, and not every path needs it
        from botocore.config import Config

        cached = boto3.client(
            service,
            endpoint_url=endpoint_url,
            config=Config(
                retries={"mode": "standard", "max_attempts": 5},
                signature_version="s3v4" if service == "s3" else None,
                # Presigned URLs otherwise name the global host (<bucket>.s3.amazonaws.com),
                # which answers a new bucket outside us-east-1 with a 307 redirect for up to a
                # day: browsers' CORS preflights do not follow it. Virtual-hosted addressing
                # gives <bucket>.s3.<region>.amazonaws.com. An endpoint override (moto) keeps
                # botocore's choice: path style for an IP address.
                s3={"addressing_style": "virtual"}
                if service == "s3" and not _endpoint_overridden(endpoint_url)
                else None,
            ),
        )
        _CLIENTS[(service, endpoint_url)] = cached
    return cached


def _endpoint_overridden(endpoint_url: str | None) -> bool:
    return bool(
        endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    )


def s3_client(endpoint_url: str | None = None) -> S3Client:
    return client("s3", endpoint_url)


def secret_string(arn: str) -> str:
    """A Secrets Manager secret's current value (``SECRETS_ENDPOINT_URL`` overrides the
    endpoint: moto). Never logged."""
    secrets = client("secretsmanager", os.environ.get("SECRETS_ENDPOINT_URL"))
    return secrets.get_secret_value(SecretId=arn)["SecretString"]


def rds_auth_token(host: str, port: int, user: str) -> str:
    """An IAM authentication token for ``user`` at ``host:port`` (RDS or RDS Proxy): the
    password of one login within 15 minutes. Signed locally with the process's credentials
    (the Lambda's or the task's role); no request is made, so it cannot fail on the network.
    Never logged."""
    token: str = client("rds").generate_db_auth_token(DBHostname=host, Port=port, DBUsername=user)
    return token
