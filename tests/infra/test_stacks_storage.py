"""Storage: the upload bucket's promises, the access-log bucket, the event queue and DLQ."""

from __future__ import annotations

import json
from typing import Any

from aws_cdk.assertions import Match

from tests.infra.conftest import Synth, file_context


def uploads_bucket(synth: Synth) -> dict[str, Any]:
    buckets = synth.resources(synth.stacks.storage, "AWS::S3::Bucket")
    [bucket] = [b for b in buckets.values() if "CorsConfiguration" in b["Properties"]]
    return bucket


def test_block_public_access_encryption_and_versioning(each_env: Synth) -> None:
    for bucket in each_env.resources(each_env.stacks.storage, "AWS::S3::Bucket").values():
        props = bucket["Properties"]
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }
        sse = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
        assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
        assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    assert uploads_bucket(each_env)["Properties"]["VersioningConfiguration"] == {
        "Status": "Enabled"
    }


def test_every_bucket_and_queue_policy_enforces_tls(each_env: Synth) -> None:
    stack = each_env.stacks.storage
    policies = list(each_env.resources(stack, "AWS::S3::BucketPolicy").values()) + list(
        each_env.resources(stack, "AWS::SQS::QueuePolicy").values()
    )
    assert len(policies) == 4  # two buckets, two queues
    for policy in policies:
        statements = policy["Properties"]["PolicyDocument"]["Statement"]
        assert any(
            s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
            for s in statements
        )


def test_server_access_logs_go_to_the_log_bucket(dev: Synth) -> None:
    bucket = uploads_bucket(dev)
    logging = bucket["Properties"]["LoggingConfiguration"]
    assert logging["LogFilePrefix"] == "uploads-bucket/"
    assert "StorageAccessLogs" in logging["DestinationBucketName"]["Ref"]
    # The log bucket admits the S3 logging service by bucket policy (ACLs are disabled).
    dev.template(dev.stacks.storage).has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Principal": {"Service": "logging.s3.amazonaws.com"},
                                "Action": "s3:PutObject",
                            }
                        )
                    ]
                )
            }
        },
    )


def test_access_logs_are_versioned_and_old_versions_expire_with_the_logs(each_env: Synth) -> None:
    """A deleted or overwritten access log stays recoverable (checkov CKV_AWS_21) for as long
    as the logs are kept, and no longer: noncurrent versions expire with them."""
    buckets = each_env.resources(each_env.stacks.storage, "AWS::S3::Bucket")
    [props] = [
        b["Properties"] for b in buckets.values() if "CorsConfiguration" not in b["Properties"]
    ]
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    [rule] = props["LifecycleConfiguration"]["Rules"]
    environments = file_context()["offload:environments"]
    days = environments[each_env.env]["storage"]["accessLogRetentionDays"]
    assert (rule["ExpirationInDays"], rule["NoncurrentVersionExpiration"]) == (
        days,
        {"NoncurrentDays": days},
    )


def test_cors_allows_the_web_origin_and_exposes_etag(dev: Synth, prod: Synth) -> None:
    for synth, origin in ((dev, "http://localhost:5173"), (prod, "https://uploads.example.com")):
        [rule] = uploads_bucket(synth)["Properties"]["CorsConfiguration"]["CorsRules"]
        assert rule["AllowedOrigins"] == [origin]
        assert "ETag" in rule["ExposedHeaders"]
        assert {"PUT", "POST"} <= set(rule["AllowedMethods"])


def rules(synth: Synth) -> dict[str, dict[str, Any]]:
    config = uploads_bucket(synth)["Properties"]["LifecycleConfiguration"]
    return {rule["Id"]: rule for rule in config["Rules"]}


def test_lifecycle_archives_uploads_and_outputs_per_config(dev: Synth, prod: Synth) -> None:
    for synth, uploads, processed, storage_class in (
        (dev, 30, 90, "GLACIER_IR"),
        (prod, 30, 180, "GLACIER"),
    ):
        by_id = rules(synth)
        assert by_id["ArchiveUploads"]["Prefix"] == "uploads/"
        assert by_id["ArchiveUploads"]["Transitions"] == [
            {"StorageClass": storage_class, "TransitionInDays": uploads}
        ]
        assert by_id["ArchiveProcessed"]["Prefix"] == "processed/"
        assert by_id["ArchiveProcessed"]["Transitions"] == [
            {"StorageClass": storage_class, "TransitionInDays": processed}
        ]
        assert all(rule["Status"] == "Enabled" for rule in by_id.values())
        config = uploads_bucket(synth)["Properties"]["LifecycleConfiguration"]
        assert config["TransitionDefaultMinimumObjectSize"] == "all_storage_classes_128K"


def test_lifecycle_aborts_multipart_uploads_and_expires_old_versions(
    dev: Synth, prod: Synth
) -> None:
    for synth, abort_days, noncurrent_days in ((dev, 1, 7), (prod, 7, 30)):
        by_id = rules(synth)
        abort = by_id["AbortIncompleteMultipartUploads"]
        assert abort["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": abort_days}
        assert "Prefix" not in abort  # the whole bucket
        expire = by_id["ExpireNoncurrentVersions"]
        assert expire["NoncurrentVersionExpiration"] == {"NoncurrentDays": noncurrent_days}


def test_object_created_under_uploads_goes_to_the_queue(dev: Synth) -> None:
    stack = dev.stacks.storage
    notifications = dev.one(stack, "Custom::S3BucketNotifications")
    [config] = notifications["NotificationConfiguration"]["QueueConfigurations"]
    assert config["Events"] == ["s3:ObjectCreated:*"]
    assert config["Filter"] == {"Key": {"FilterRules": [{"Name": "prefix", "Value": "uploads/"}]}}
    assert "StorageUploadEvents" in json.dumps(config["QueueArn"])


def test_event_queue_is_encrypted_with_a_dlq(dev: Synth) -> None:
    queues = dev.resources(dev.stacks.storage, "AWS::SQS::Queue")
    assert len(queues) == 2
    main = next(q for q in queues.values() if "RedrivePolicy" in q["Properties"])
    assert main["Properties"]["RedrivePolicy"]["maxReceiveCount"] == 5
    assert "UploadEventsDlq" in json.dumps(main["Properties"]["RedrivePolicy"])
    for queue in queues.values():
        assert queue["Properties"]["SqsManagedSseEnabled"] is True


def test_stateful_stack_protection_and_retention(dev: Synth, prod: Synth) -> None:
    assert prod.stacks.storage.termination_protection is True
    assert dev.stacks.storage.termination_protection is False
    for bucket in prod.resources(prod.stacks.storage, "AWS::S3::Bucket").values():
        assert bucket["DeletionPolicy"] == "Retain"
    for bucket in dev.resources(dev.stacks.storage, "AWS::S3::Bucket").values():
        assert bucket["DeletionPolicy"] == "Delete"


def test_access_policies_are_scoped_to_prefixes(dev: Synth) -> None:
    policies = dev.resources(dev.stacks.storage, "AWS::IAM::ManagedPolicy")
    by_sid = {}
    for policy in policies.values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            by_sid[statement["Sid"]] = statement

    def resource_suffix(statement: dict[str, Any]) -> str:
        resource = statement["Resource"]
        if isinstance(resource, dict) and "Fn::Join" in resource:
            return resource["Fn::Join"][1][-1]
        return ""

    assert sorted(by_sid["ReadUploads"]["Action"]) == ["s3:GetObject", "s3:GetObjectVersion"]
    assert resource_suffix(by_sid["ReadUploads"]) == "/uploads/*"
    assert sorted(by_sid["WriteProcessed"]["Action"]) == ["s3:AbortMultipartUpload", "s3:PutObject"]
    assert resource_suffix(by_sid["WriteProcessed"]) == "/processed/*"
    assert resource_suffix(by_sid["PresignAndManageUploads"]) == "/uploads/*"
    assert by_sid["TellMissingFromForbidden"]["Action"] == "s3:ListBucket"
    assert by_sid["ReadProcessed"]["Action"] == "s3:GetObject"
    assert resource_suffix(by_sid["ReadProcessed"]) == "/processed/*"
    # the reconciler's: abort expired multipart uploads, nothing else, under uploads/ only
    assert by_sid["AbortExpiredUploads"]["Action"] == "s3:AbortMultipartUpload"
    assert resource_suffix(by_sid["AbortExpiredUploads"]) == "/uploads/*"
