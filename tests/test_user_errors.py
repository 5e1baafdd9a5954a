"""offload.user_errors: the text a user may read of a failure names no bucket, ARN, account id,
URL, SQL or traceback, whatever raised it."""

from __future__ import annotations

import psycopg
import pytest
import redis
from botocore.exceptions import ClientError, EndpointConnectionError

from offload.user_errors import HIDDEN, MAX_CHARS, redact, user_message

BUCKET = "offload-prod-uploads-123456789012-us-east-1"
KEY = "uploads/user-a/up1/photo.jpg"
# What S3 answers a role without the permission (AccessDenied's message, as AWS writes it).
ACCESS_DENIED = (
    "User: arn:aws:sts::123456789012:assumed-role/offload-worker/i-0abc is not authorized to"
    f' perform: s3:PutObject on resource: "arn:aws:s3:::{BUCKET}/{KEY}" because no'
    " identity-based policy allows the s3:PutObject action"
)
SECRETS = (BUCKET, "123456789012", "arn:", "offload-worker", "amazonaws.com", "X-Amz-")


def assert_no_internal_name(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, (secret, text)


def test_an_aws_error_shows_its_code_only():
    exc = ClientError({"Error": {"Code": "AccessDenied", "Message": ACCESS_DENIED}}, "PutObject")
    assert BUCKET in str(exc)  # what botocore's own text carries
    assert user_message(exc) == "ClientError: storage request failed (AccessDenied)"


def test_an_aws_error_without_a_readable_code_shows_no_code():
    bad_code = ClientError({"Error": {"Code": f"<{BUCKET}>", "Message": "x"}}, "GetObject")
    assert user_message(bad_code) == "ClientError: storage request failed"
    url = f"https://{BUCKET}.s3.us-east-1.amazonaws.com/{KEY}"
    unreachable = EndpointConnectionError(endpoint_url=url)
    assert user_message(unreachable) == "EndpointConnectionError: storage request failed"


def test_database_and_queue_errors_show_no_text():
    sql = psycopg.errors.UndefinedTable('relation "jobs_x" does not exist\nLINE 1: SELECT * FROM')
    assert user_message(sql) == "UndefinedTable: internal database error"
    down = redis.exceptions.ConnectionError("Error 111 connecting to cache.abc.amazonaws.com:6379")
    assert user_message(down) == "ConnectionError: internal queue error"


class OurOwnError(ValueError):
    """A subclass defined outside the libraries: judged by its text."""


def test_other_errors_keep_their_words_without_internal_names():
    text = (
        f"cannot read s3://{BUCKET}/{KEY} via https://{BUCKET}.s3.amazonaws.com/{KEY}"
        "?X-Amz-Signature=abc (role arn:aws:iam::123456789012:role/offload-worker, account id"
        f" 123456789012, host db.abc.eu-west-1.rds.amazonaws.com, bucket {BUCKET})"
    )
    shown = user_message(OurOwnError(text), names=[BUCKET])
    assert_no_internal_name(shown)
    assert shown.startswith("OurOwnError: cannot read [hidden] via [hidden]")
    assert shown.count(HIDDEN) == 6
    assert user_message(ValueError("not an image: photo.jpg")) == (
        "ValueError: not an image: photo.jpg"
    )
    assert user_message(MemoryError()) == "MemoryError"


def test_a_traceback_in_a_message_is_cut_and_long_texts_are_capped():
    text = 'bad input\nTraceback (most recent call last):\n  File "/app/x.py", line 3'
    assert redact(text) == "bad input"
    long = redact("x" * 10_000)
    assert len(long) == MAX_CHARS and long.endswith("...")


@pytest.mark.parametrize(
    "text",
    [
        "object is 123456789012 bytes, 5 were announced",  # a size is not an account id
        "part 3 of photo.jpg is missing",
        "job b failed",  # a name shorter than 3 characters is never replaced
    ],
)
def test_ordinary_texts_are_kept(text):
    assert redact(text, names=["b", "photo"]) == text


def test_names_are_replaced_where_they_stand_alone():
    assert redact("bucket my-bkt: denied", ["my-bkt"]) == f"bucket {HIDDEN}: denied"
    assert redact("no bucket my-bkt.", ["my-bkt"]) == f"no bucket {HIDDEN}."
    assert redact("my-bkt-2 and xmy-bkt are other words", ["my-bkt"]) == (
        "my-bkt-2 and xmy-bkt are other words"
    )


def test_redact_is_idempotent():
    text = user_message(RuntimeError(ACCESS_DENIED), [BUCKET])
    assert redact(text, [BUCKET]) == text
    assert_no_internal_name(text)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_an_exception_whose_text_fails_shows_its_type():
    assert user_message(Unprintable()) == "Unprintable"
