"""S3 event parsing (offload.s3events): AWS-format samples and events moto really sends."""

from __future__ import annotations

import json

import boto3
import pytest

from offload.db.uploads import Upload
from offload.jobs import INSPECT, THUMBNAIL, job_id
from offload.pipelines import FINALIZE
from offload.s3events import (
    MalformedEvent,
    S3ObjectEvent,
    parse_message,
    parse_notification,
    planned_jobs,
)
from tests.support.events import receive_all, s3_body, s3_record, s3_test_event_body


def test_aws_sample_is_parsed_and_the_key_decoded():
    body = s3_body(
        s3_record(
            "bkt",
            "uploads/u1/up1/my photo+1 é.png",
            1024,
            "d41d8cd98f00b204e9800998ecf8427e",
            version_id="096fKKXTRTtl3on89fVO.nfljtsv6qko",
        )
    )
    assert '"uploads/u1/up1/my+photo%2B1+%C3%A9.png"' in body  # as S3 encodes it
    (event,) = parse_message(body).records
    assert event == S3ObjectEvent(
        event_name="ObjectCreated:Put",
        bucket="bkt",
        key="uploads/u1/up1/my photo+1 é.png",
        size=1024,
        etag="d41d8cd98f00b204e9800998ecf8427e",
        version_id="096fKKXTRTtl3on89fVO.nfljtsv6qko",
        sequencer="0055AED6DCD90281E5",
        event_time="2026-01-01T00:00:00.000Z",
    )
    assert event.is_object_created and event.is_upload and event.complete


def test_test_event_has_no_records():
    notification = parse_message(s3_test_event_body("bkt"))
    assert notification.test_event and notification.records == () and notification.bucket == "bkt"


def test_quoted_etag_empty_version_and_missing_size():
    record = s3_record("bkt", "uploads/u/x/f", None, '"abc-2"', version_id="")
    (event,) = parse_notification({"Records": [record]}).records
    assert (event.size, event.etag, event.version_id) == (None, "abc-2", None)
    assert not event.complete
    suspended = s3_record("bkt", "uploads/u/x/f", 1, "e", version_id="null")
    assert parse_notification({"Records": [suspended]}).records[0].version_id is None
    head = {"ContentLength": 7, "ETag": '"abc-2"', "VersionId": "v1"}
    assert event.with_head(head) == S3ObjectEvent(
        "ObjectCreated:Put", "bkt", "uploads/u/x/f", 7, "abc-2", "v1", event.sequencer,
        event.event_time,
    )  # fmt: skip


def test_other_event_kinds_and_prefixes_are_recognised():
    removed = s3_record("bkt", "uploads/u/x/f", 1, "e", event_name="ObjectRemoved:Delete")
    outside = s3_record("bkt", "processed/u/x/manifest.json", 1, "e")
    first, second = parse_message(s3_body(removed, outside)).records
    assert not first.is_object_created and first.is_upload
    assert second.is_object_created and not second.is_upload


def _record_without(path: str) -> dict:
    record = s3_record("bkt", "uploads/u/x/f", 1, "e")
    *parents, last = path.split(".")
    target = record
    for name in parents:
        target = target[name]
    del target[last]
    return record


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("", "empty"),
        ("not json", "not JSON"),
        ("[1, 2]", "not an object"),
        ("{}", "no Records"),
        ('{"Records": []}', "no Records"),
        ('{"Records": ["x"]}', "not an object"),
        (json.dumps({"Records": [{"eventSource": "aws:sqs"}]}), "eventSource"),
        (json.dumps({"Records": [_record_without("eventName")]}), "eventName"),
        (json.dumps({"Records": [_record_without("s3.bucket.name")]}), "'name'"),
        (json.dumps({"Records": [_record_without("s3.object.key")]}), "'key'"),
        (json.dumps({"Records": [_record_without("s3.object")]}), "'object'"),
        (s3_body(s3_record("bkt", "", 1, "e")), "s3.object.key"),
        (s3_body(s3_record("bkt", "uploads/u/x/f", -1, "e")), "size"),
        (s3_body(s3_record("bkt", "uploads/u/x/f", True, "e")), "size"),
        (s3_body(s3_record("bkt", "uploads/u/x/f", "12", "e")), "size"),
        (s3_body(s3_record("bkt", "uploads/u/x/f", 1, 5)), "eTag"),  # type: ignore[arg-type]
        (s3_body(s3_record("bkt", "uploads/u/x/f", 1, "e", version_id=5)), "versionId"),  # type: ignore[arg-type]
    ],
)
def test_malformed_messages_say_why(body, reason):
    with pytest.raises(MalformedEvent, match=reason):
        parse_message(body)


def test_invalid_percent_encoding_is_malformed():
    record = s3_record("bkt", "uploads/u/x/f", 1, "e")
    record["s3"]["object"]["key"] = "uploads/u/x/%ff%fe"
    with pytest.raises(MalformedEvent, match="percent-encoded UTF-8"):
        parse_notification({"Records": [record]})


def _upload(detected_type: str | None, version_id: str | None = None) -> Upload:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return Upload(
        "up1", "u1", "bkt", "uploads/u1/up1/f", "f", "image/png", 5, 5, "etag1", version_id,
        None, "uploaded", None, now, now, detected_type=detected_type,
    )  # fmt: skip


def test_planned_jobs_by_detected_type_and_ids_follow_the_object_revision():
    def names(upload: Upload) -> list[str]:
        return [name for name, _ in planned_jobs(upload)]

    assert names(_upload("image/PNG")) == [FINALIZE, INSPECT, THUMBNAIL]
    # the announced type (image/png on every row here) never picks the pipeline
    assert names(_upload("application/pdf")) == [FINALIZE, INSPECT]
    assert names(_upload(None)) == [FINALIZE, INSPECT]
    (_, ref), *_ = planned_jobs(_upload("image/png", version_id="v9"))
    assert (ref.bucket, ref.key, ref.version_id, ref.etag, ref.owner, ref.upload_id) == (
        "bkt", "uploads/u1/up1/f", "v9", "etag1", "u1", "up1",
    )  # fmt: skip
    with_version = job_id(INSPECT, planned_jobs(_upload("x/y", "v9"))[0][1])
    without = job_id(INSPECT, planned_jobs(_upload("x/y"))[0][1])
    assert with_version != without


def test_events_moto_sends_single_and_multipart(moto_endpoint, s3, bucket):
    """What moto really sends (and what the enqueue tests rely on): a TestEvent when the
    notification is configured, URL-encoded keys, and for one multipart completion two events
    (ObjectCreated:Put and ObjectCreated:CompleteMultipartUpload) with the same size and ETag."""
    from tests.support.events import wire_notifications

    sqs = boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")
    url = wire_notifications(s3, sqs, bucket)
    s3.put_object(Bucket=bucket, Key="uploads/u1/a/my file+1.txt", Body=b"hello")
    s3.put_object(Bucket=bucket, Key="elsewhere/x", Body=b"x")  # filtered out by the prefix
    key = "uploads/u1/b/big.bin"
    mpu = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    for number, size in ((1, 5 * 1024 * 1024), (2, 10)):
        etag = s3.upload_part(
            Bucket=bucket, Key=key, UploadId=mpu, PartNumber=number, Body=b"z" * size
        )["ETag"]
        parts.append({"ETag": etag, "PartNumber": number})
    s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=mpu, MultipartUpload={"Parts": parts}
    )

    notifications = [parse_message(m["Body"]) for m in receive_all(sqs, url, expected=4)]
    assert notifications[0].test_event and notifications[0].bucket == bucket
    events = [event for n in notifications[1:] for event in n.records]
    assert [(e.event_name, e.key) for e in events] == [
        ("ObjectCreated:Put", "uploads/u1/a/my file+1.txt"),
        ("ObjectCreated:Put", key),
        ("ObjectCreated:CompleteMultipartUpload", key),
    ]
    head = s3.head_object(Bucket=bucket, Key=key)
    for event in events[1:]:
        assert event.size == 5 * 1024 * 1024 + 10 == head["ContentLength"]
        assert event.etag == head["ETag"].strip('"') and event.etag.endswith("-2")
        assert event.version_id is None  # unversioned bucket
