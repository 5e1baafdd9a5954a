"""The AWS resources the CDK stacks create, made in moto for the local stack: the upload
bucket (versioned, CORS for the page, ObjectCreated events to SQS), the events queue with its
dead-letter queue, and the Cognito user pool, app client and a demo user."""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass
from typing import Any

import boto3

from offload.caller import KNOWN_GROUPS

REGION = "us-east-1"
UPLOADS_PREFIX = "uploads/"


def client(service: str, endpoint: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@dataclass(frozen=True)
class EventQueues:
    url: str
    arn: str
    dlq_url: str


def create_bucket(endpoint: str, bucket: str, web_origins: list[str]) -> None:
    s3 = client("s3", endpoint)
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_cors(
        Bucket=bucket,
        CORSConfiguration={
            "CORSRules": [
                {
                    "ID": "BrowserUploads",
                    "AllowedMethods": ["PUT", "POST", "GET", "HEAD"],
                    "AllowedOrigins": web_origins,
                    "AllowedHeaders": ["*"],
                    # A browser reads a part's ETag only when CORS exposes it.
                    "ExposeHeaders": ["ETag"],
                    "MaxAgeSeconds": 3000,
                }
            ]
        },
    )


def create_event_queues(
    endpoint: str, name: str, max_receive_count: int, visibility_timeout_s: int
) -> EventQueues:
    sqs = client("sqs", endpoint)
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = queue_arn(sqs, dlq_url)
    url = sqs.create_queue(
        QueueName=name,
        Attributes={
            "VisibilityTimeout": str(visibility_timeout_s),
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)}
            ),
        },
    )["QueueUrl"]
    return EventQueues(url, queue_arn(sqs, url), dlq_url)


def create_upload_events(endpoint: str, bus_name: str) -> str:
    """An EventBridge bus for the workers' ``Upload Processed`` / ``Upload Failed`` events
    (``offload.upload_events``), with a rule that copies each of them to an SQS queue of the
    same name: what a deployer's subscriber would see, readable on the local stack. Returns
    the queue's URL."""
    events = client("events", endpoint)
    sqs = client("sqs", endpoint)
    events.create_event_bus(Name=bus_name)
    url = sqs.create_queue(QueueName=bus_name)["QueueUrl"]
    events.put_rule(
        Name="offload-upload-events",
        EventBusName=bus_name,
        EventPattern=json.dumps({"source": ["offload"]}),
        State="ENABLED",
    )
    events.put_targets(
        Rule="offload-upload-events",
        EventBusName=bus_name,
        Targets=[{"Id": "queue", "Arn": queue_arn(sqs, url)}],
    )
    return str(url)


def queue_arn(sqs: Any, url: str) -> str:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return attributes["Attributes"]["QueueArn"]


def notify_object_created(s3: Any, bucket: str, target_queue_arn: str) -> None:
    """ObjectCreated under uploads/ to the events queue; S3's s3:TestEvent is left for the
    enqueue Lambda to skip, as in AWS."""
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "Id": "uploads",
                    "QueueArn": target_queue_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {
                        "Key": {"FilterRules": [{"Name": "prefix", "Value": UPLOADS_PREFIX}]}
                    },
                }
            ]
        },
    )


@dataclass(frozen=True)
class UserPool:
    id: str
    client_id: str


@dataclass(frozen=True)
class User:
    username: str
    password: str
    sub: str


def create_user_pool(endpoint: str, name: str) -> UserPool:
    cognito = client("cognito-idp", endpoint)
    pool_id = cognito.create_user_pool(
        PoolName=name,
        UsernameAttributes=["email"],
        AutoVerifiedAttributes=["email"],
    )["UserPool"]["Id"]
    client_id = cognito.create_user_pool_client(
        UserPoolId=pool_id,
        ClientName=f"{name}-web",
        GenerateSecret=False,
        ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
    )["UserPoolClient"]["ClientId"]
    # The groups the stack creates (stacks/auth.py), so a user can be put in a tier.
    for group in sorted(KNOWN_GROUPS):
        cognito.create_group(GroupName=group, UserPoolId=pool_id)
    return UserPool(pool_id, client_id)


def add_to_group(endpoint: str, pool: UserPool, username: str, group: str) -> None:
    """Put a user in a group (``plus``, ``operators``...): their next ID token names it in
    ``cognito:groups``, as Cognito's does."""
    client("cognito-idp", endpoint).admin_add_user_to_group(
        UserPoolId=pool.id, Username=username, GroupName=group
    )


def random_password() -> str:
    """Meets Cognito's default policy: upper, lower, digit, symbol, length >= 8."""
    alphabet = string.ascii_letters + string.digits
    core = "".join(secrets.choice(alphabet) for _ in range(14))
    return f"Aa1!{core}"


def create_user(endpoint: str, pool: UserPool, email: str, password: str | None = None) -> User:
    cognito = client("cognito-idp", endpoint)
    password = password or random_password()
    cognito.admin_create_user(
        UserPoolId=pool.id,
        Username=email,
        UserAttributes=[
            {"Name": "email", "Value": email},
            {"Name": "email_verified", "Value": "true"},
        ],
        MessageAction="SUPPRESS",
    )
    cognito.admin_set_user_password(
        UserPoolId=pool.id, Username=email, Password=password, Permanent=True
    )
    attributes = cognito.admin_get_user(UserPoolId=pool.id, Username=email)["UserAttributes"]
    sub = next(a["Value"] for a in attributes if a["Name"] == "sub")
    return User(email, password, sub)


def id_token(endpoint: str, pool: UserPool, username: str, password: str) -> str:
    """A user's Cognito ID token (USER_PASSWORD_AUTH, as the page and the CLI sign in)."""
    answer = client("cognito-idp", endpoint).initiate_auth(
        ClientId=pool.client_id,
        AuthFlow="USER_PASSWORD_AUTH",
        AuthParameters={"USERNAME": username, "PASSWORD": password},
    )
    return answer["AuthenticationResult"]["IdToken"]
