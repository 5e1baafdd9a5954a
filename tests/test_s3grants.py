"""What the worker presigns for a sandbox child (fargate_worker/s3grants.py): its job's object
and its job's outputs, nothing else; and what the child's client (presigned_s3.py) lets out of
a URL. Signing is local (no server): fake credentials. The requests themselves go to moto in
test_processors.py and test_worker_jobs.py."""

from __future__ import annotations

import socket
import traceback
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from botocore.config import Config

from fargate_worker import presigned_s3
from fargate_worker.s3grants import GrantRefused, JobGrants
from offload.jobs import JobRef

REF = JobRef("bkt", "uploads/user-1/up-1/photo.jpg", version_id="v1", etag="abc")


def grants(ref: JobRef = REF) -> JobGrants:
    client = boto3.client(
        "s3",
        region_name="eu-west-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
        config=Config(signature_version="s3v4"),
    )
    return JobGrants(ref, lambda: client)


def test_the_jobs_object_is_signed_pinned_to_its_version_and_etag() -> None:
    url = grants().presign(
        "get_object",
        {"Bucket": "bkt", "Key": REF.key, "VersionId": "v1", "IfMatch": '"abc"'},
    )
    query = parse_qs(urlsplit(url).query)
    assert urlsplit(url).path.endswith("/uploads/user-1/up-1/photo.jpg")
    assert query["versionId"] == ["v1"]
    assert query["X-Amz-SignedHeaders"] == ["host;if-match"]  # the child must send If-Match
    assert query["X-Amz-Expires"] == ["900"]


def test_an_output_is_signed_with_its_content_type() -> None:
    url = grants().presign(
        "put_object",
        {"Bucket": "bkt", "Key": "processed/user-1/up-1/thumb.jpg", "ContentType": "image/jpeg"},
    )
    assert parse_qs(urlsplit(url).query)["X-Amz-SignedHeaders"] == ["content-type;host"]


@pytest.mark.parametrize(
    ("operation", "params"),
    [
        ("get_object", {"Bucket": "bkt", "Key": "uploads/user-2/up-9/x.jpg", "VersionId": "v1"}),
        ("get_object", {"Bucket": "other", "Key": REF.key, "VersionId": "v1"}),
        ("get_object", {"Bucket": "bkt", "Key": REF.key, "VersionId": "v0"}),  # older version
        ("get_object", {"Bucket": "bkt", "Key": REF.key}),  # latest, maybe not the job's
        ("get_object", {"Bucket": "bkt", "Key": REF.key, "VersionId": "v1", "Range": "x"}),
        ("put_object", {"Bucket": "bkt", "Key": REF.key}),  # overwrite the upload
        ("put_object", {"Bucket": "bkt", "Key": "processed/user-2/up-9/manifest.json"}),
        ("put_object", {"Bucket": "bkt", "Key": "processed/user-1/up-1/"}),
        ("put_object", {"Bucket": "bkt", "Key": "processed/user-1/up-1/a/b"}),
        ("put_object", {"Bucket": "bkt", "Key": "processed/user-1/up-1/x", "ACL": "public-read"}),
        ("put_object", {"Bucket": "other", "Key": "processed/user-1/up-1/x"}),
        ("delete_object", {"Bucket": "bkt", "Key": "processed/user-1/up-1/x"}),
        ("list_objects_v2", {"Bucket": "bkt"}),
    ],
)
def test_anything_else_is_refused(operation: str, params: dict[str, Any]) -> None:
    with pytest.raises(GrantRefused):
        grants().presign(operation, params)


def test_a_job_on_a_key_outside_the_upload_layout_writes_next_to_its_key_only() -> None:
    demo = grants(JobRef("bkt", "demo/a.jpg"))
    demo.presign("put_object", {"Bucket": "bkt", "Key": "processed/demo/a.jpg.manifest.json"})
    with pytest.raises(GrantRefused):
        demo.presign("put_object", {"Bucket": "bkt", "Key": "processed/demo/b.jpg.manifest.json"})


def test_a_transfer_error_does_not_quote_the_presigned_url(monkeypatch) -> None:
    """Job errors reach PostgreSQL, the logs and the job's user: botocore's connection errors
    quote the URL, which holds the signature and the worker's session token."""
    monkeypatch.setattr(presigned_s3, "MAX_ATTEMPTS", 2)
    monkeypatch.setattr(presigned_s3, "_back_off", lambda attempt: None)
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"http://127.0.0.1:{port}/bkt/key?X-Amz-Signature=s3cr3t&X-Amz-Security-Token=t0ken"
    s3 = presigned_s3.PresignedS3(lambda operation, params: url)
    with pytest.raises(presigned_s3.S3TransferError) as raised:
        s3.get_object(Bucket="bkt", Key="key")
    text = "".join(traceback.format_exception(raised.value))
    assert "EndpointConnectionError" in text
    assert "s3cr3t" not in text and "t0ken" not in text and str(port) not in text
