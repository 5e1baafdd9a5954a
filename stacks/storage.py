"""The upload bucket, its access-log bucket, and the S3 event buffer (SQS + DLQ).

Stateful: ``StorageStack`` has termination protection where the environment asks for it, and
the construct ids below must never change (a new id is a new, empty bucket).
"""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from stacks.base import OffloadStack
from stacks.config import EnvConfig, StorageConfig
from stacks.nag import acknowledge

UPLOADS_PREFIX = "uploads/"
PROCESSED_PREFIX = "processed/"
# Six times the enqueue Lambda's timeout (stacks.api.ENQUEUE_TIMEOUT), as AWS advises for an
# SQS event source, so a message is never redelivered while a batch is still being handled.
EVENTS_VISIBILITY_TIMEOUT = Duration.minutes(6)
EVENTS_RETENTION = Duration.days(4)
DLQ_RETENTION = Duration.days(14)
# BucketNotifications custom resource that CDK adds once per stack.
_NOTIFICATIONS_HANDLER_ID = "BucketNotificationsHandler050a0587b7544547bf325f094a3db834"


class UploadStorage(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: StorageConfig,
        web_origins: tuple[str, ...],
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, id)
        # The API stops handing out links to outputs old enough to be archived (Glacier
        # objects answer a GET with InvalidObjectState until restored).
        self.processed_archive_after_days = config.processed_archive_after_days
        # The API counts an unfinished multipart upload against its owner's quota until then.
        self.abort_incomplete_multipart_after_days = config.abort_incomplete_multipart_after_days
        self.access_logs = s3.Bucket(
            self,
            "AccessLogs",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,  # the only one server access logs accept
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            # Versioned: a log deleted or overwritten (to hide what a request did) stays
            # recoverable as a noncurrent version, for as long as the logs are kept.
            versioned=True,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="ExpireAccessLogs",
                    expiration=Duration.days(config.access_log_retention_days),
                    noncurrent_version_expiration=Duration.days(config.access_log_retention_days),
                    abort_incomplete_multipart_upload_after=Duration.days(1),
                )
            ],
            removal_policy=removal_policy,
        )
        acknowledge(
            self.access_logs,
            "AwsSolutions-S1",
            "This is the access-log bucket itself; logging it into itself would loop.",
        )

        archive = config.archive_class
        self.bucket = s3.Bucket(
            self,
            "Uploads",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix="uploads-bucket/",
            cors=[
                s3.CorsRule(
                    id="BrowserUploads",
                    allowed_methods=[
                        s3.HttpMethods.PUT,
                        s3.HttpMethods.POST,
                        s3.HttpMethods.GET,
                        s3.HttpMethods.HEAD,
                    ],
                    allowed_origins=list(web_origins),
                    allowed_headers=["*"],
                    # Browsers can read a part's ETag only when CORS exposes it, and multipart
                    # completion needs every part's ETag.
                    exposed_headers=["ETag"],
                    max_age=3000,
                )
            ],
            # Objects under 128 KiB (thumbnails, manifests) are not transitioned: per-object
            # transition requests and Glacier's per-object overhead cost more than they save.
            transition_default_minimum_object_size=(
                s3.TransitionDefaultMinimumObjectSize.ALL_STORAGE_CLASSES_128_K
            ),
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="ArchiveUploads",
                    prefix=UPLOADS_PREFIX,
                    transitions=[
                        s3.Transition(
                            storage_class=archive,
                            transition_after=Duration.days(config.uploads_archive_after_days),
                        )
                    ],
                ),
                s3.LifecycleRule(
                    id="ArchiveProcessed",
                    prefix=PROCESSED_PREFIX,
                    transitions=[
                        s3.Transition(
                            storage_class=archive,
                            transition_after=Duration.days(config.processed_archive_after_days),
                        )
                    ],
                ),
                s3.LifecycleRule(
                    id="AbortIncompleteMultipartUploads",
                    abort_incomplete_multipart_upload_after=Duration.days(
                        config.abort_incomplete_multipart_after_days
                    ),
                ),
                s3.LifecycleRule(
                    id="ExpireNoncurrentVersions",
                    noncurrent_version_expiration=Duration.days(
                        config.noncurrent_version_expiration_days
                    ),
                    expired_object_delete_marker=True,
                ),
            ],
            removal_policy=removal_policy,
        )

        self.events_dlq = sqs.Queue(
            self,
            "UploadEventsDlq",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=DLQ_RETENTION,
        )
        # SSE-SQS (not SSE-KMS with the AWS managed key, which S3 cannot use to send events).
        self.events_queue = sqs.Queue(
            self,
            "UploadEvents",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            visibility_timeout=EVENTS_VISIBILITY_TIMEOUT,
            retention_period=EVENTS_RETENTION,
            dead_letter_queue=sqs.DeadLetterQueue(
                max_receive_count=config.events_max_receive_count, queue=self.events_dlq
            ),
        )
        self.bucket.add_event_notification(
            s3.EventType.OBJECT_CREATED,
            s3n.SqsDestination(self.events_queue),
            s3.NotificationKeyFilter(prefix=UPLOADS_PREFIX),
        )
        self._access_policies()
        handler = Stack.of(self).node.try_find_child(_NOTIFICATIONS_HANDLER_ID)
        if handler is not None:
            acknowledge(
                handler,
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                "AWSLambdaBasicExecutionRole]",
                "CDK's own bucket-notifications custom resource; the managed policy only lets "
                "it write its logs.",
            )
            acknowledge(
                handler,
                "AwsSolutions-IAM5[Resource::*]",
                "CDK's own bucket-notifications custom resource needs s3:PutBucketNotification; "
                "it runs only during deployments.",
            )

    def _access_policies(self) -> None:
        """Least-privilege access to the bucket, one managed policy per use, attached by the
        consumers (workers, Lambdas). They live here, beside the bucket, so each statement
        names the bucket directly and the prefix wildcard is acknowledged once, with its
        reason."""
        bucket_ref = f"<{Stack.of(self).resolve(self.bucket.node.default_child.logical_id)}.Arn>"  # type: ignore[union-attr]

        def policy(
            id: str, description: str, *statements: iam.PolicyStatement
        ) -> iam.ManagedPolicy:
            managed = iam.ManagedPolicy(
                self, id, description=description, statements=list(statements)
            )
            for statement in statements:
                for resource in statement.resources:
                    if resource.endswith("*"):
                        prefix = resource.rsplit("/", 1)[0].rsplit("/", 1)[-1]
                        acknowledge(
                            managed,
                            f"AwsSolutions-IAM5[Resource::{bucket_ref}/{prefix}/*]",
                            f"Objects under the bucket's {prefix}/ prefix only: keys are "
                            "per user and per upload, so they cannot be listed in advance.",
                        )
            return managed

        uploads = self.bucket.arn_for_objects(f"{UPLOADS_PREFIX}*")
        processed = self.bucket.arn_for_objects(f"{PROCESSED_PREFIX}*")

        def tell_missing_from_forbidden() -> iam.PolicyStatement:
            # Without ListBucket, S3 answers 403 instead of 404 for a missing key, and the
            # caller could not tell "not there (yet)" from "forbidden".
            return iam.PolicyStatement(
                sid="TellMissingFromForbidden",
                actions=["s3:ListBucket"],
                resources=[self.bucket.bucket_arn],
            )

        self.read_uploads_policy = policy(
            "ReadUploadsPolicy",
            "offload: read uploaded originals (uploads/*)",
            iam.PolicyStatement(
                sid="ReadUploads",
                actions=["s3:GetObject", "s3:GetObjectVersion"],
                resources=[uploads],
            ),
            tell_missing_from_forbidden(),
        )
        # The API presigns GETs of a completed job's outputs: a presigned URL carries its
        # signer's permissions, so without this every result link would answer 403.
        self.read_processed_policy = policy(
            "ReadProcessedPolicy",
            "offload: presign downloads of processing outputs (processed/*)",
            iam.PolicyStatement(
                sid="ReadProcessed", actions=["s3:GetObject"], resources=[processed]
            ),
        )
        self.write_processed_policy = policy(
            "WriteProcessedPolicy",
            "offload: write processing outputs (processed/*)",
            iam.PolicyStatement(
                sid="WriteProcessed",
                actions=["s3:PutObject", "s3:AbortMultipartUpload"],
                resources=[processed],
            ),
        )
        self.manage_uploads_policy = policy(
            "ManageUploadsPolicy",
            "offload: presign uploads, manage multipart uploads, check objects (uploads/*)",
            iam.PolicyStatement(
                sid="PresignAndManageUploads",
                actions=[
                    "s3:PutObject",
                    "s3:GetObject",
                    "s3:AbortMultipartUpload",
                    "s3:ListMultipartUploadParts",
                ],
                resources=[uploads],
            ),
            tell_missing_from_forbidden(),
        )
        # The reconciler aborts pending multipart uploads whose part URLs expired
        # (offload/expired_uploads.py): abort only, no write, no listing of parts.
        self.abort_uploads_policy = policy(
            "AbortUploadsPolicy",
            "offload: abort expired multipart uploads (uploads/*)",
            iam.PolicyStatement(
                sid="AbortExpiredUploads",
                actions=["s3:AbortMultipartUpload"],
                resources=[uploads],
            ),
        )


class StorageStack(OffloadStack):
    """Upload bucket, access-log bucket, S3 event queue and DLQ (stateful)."""

    stateful = True

    def __init__(self, scope: Construct, id: str, *, config: EnvConfig, **kwargs: Any) -> None:
        super().__init__(scope, id, config=config, **kwargs)
        self.storage = UploadStorage(
            self,
            "Storage",
            config=config.storage,
            web_origins=config.web_origins,
            removal_policy=self.stateful_removal_policy,
        )
        CfnOutput(self, "UploadBucketName", value=self.storage.bucket.bucket_name)
