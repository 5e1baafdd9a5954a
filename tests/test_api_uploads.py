"""Upload routes end to end: the API Lambda in-process, the bytes over real HTTP to the moto
server with the URLs the API returned.

moto accepts presigned POSTs without enforcing their policy and ignores presign expiry, so the
policy and the URLs' signing parameters are asserted on what the API returned.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from datetime import UTC, datetime
from urllib.parse import parse_qs, unquote, urlsplit

import psycopg
import pytest
import requests
from psycopg.rows import dict_row

from offload.keys import UploadKey
from offload.uploads import MiB
from tests.support import sigv4
from tests.support.apigw import call, configure
from tests.support.s3data import upload_generated

SIZE = 16 * MiB + 12_345  # 4 parts of 5 MiB, the last one 1 MiB + 12,345 bytes


def upload_row(settings, upload_id: str) -> dict | None:
    with psycopg.connect(
        settings.database_url, options=f"-c search_path={settings.database_schema}"
    ) as conn:
        conn.row_factory = dict_row
        return conn.execute("SELECT * FROM uploads WHERE id = %s", (upload_id,)).fetchone()


def put_part(url: str, data: bytes) -> str:
    response = requests.put(url, data=data, timeout=30)
    assert response.status_code == 200, response.text
    return response.headers["ETag"]


def start_multipart(monkeypatch, **env) -> dict:
    configure(monkeypatch, OFFLOAD_SINGLE_UPLOAD_MAX_BYTES=1, **env)
    created = call(
        "POST",
        "/uploads",
        body={"filename": "big video.mp4", "size": SIZE, "contentType": "video/mp4"},
    )
    assert created.status == 201, created.body
    return created.body


@pytest.fixture
def payload() -> bytes:
    return os.urandom(SIZE)


def chunk(data: bytes, part_size: int, number: int) -> bytes:
    return data[(number - 1) * part_size : number * part_size]


def test_single_upload_with_presigned_post(lambda_env, settings, s3, bucket, monkeypatch):
    configure(monkeypatch, OFFLOAD_URL_EXPIRY_S=120)
    content = b"name,count\nalpha,1\n" * 50
    before = time.time()
    created = call(
        "POST",
        "/uploads",
        body={"filename": "report.csv", "size": len(content), "contentType": "text/csv"},
    )
    assert created.status == 201, created.body
    view = created.body
    assert view["type"] == "single"
    assert view["state"] == "pending"
    assert view["size"] == len(content)
    assert view["contentType"] == "text/csv"
    assert created.headers["cache-control"] == "no-store"
    key = UploadKey.parse(view["key"])
    assert (key.owner, key.upload_id, key.filename) == ("user-a", view["id"], "report.csv")
    assert "partUrls" not in view

    post = view["post"]
    fields = post["fields"]
    assert fields["key"] == view["key"]
    assert fields["Content-Type"] == "text/csv"
    policy = json.loads(base64.b64decode(fields["policy"]))
    conditions = policy["conditions"]
    assert {"key": view["key"]} in conditions
    assert {"bucket": bucket} in conditions
    assert {"Content-Type": "text/csv"} in conditions
    assert ["content-length-range", len(content), len(content)] in conditions
    expiration = datetime.strptime(policy["expiration"], "%Y-%m-%dT%H:%M:%SZ")
    expires_in = expiration.replace(tzinfo=UTC).timestamp() - before
    assert 115 <= expires_in <= 125, expires_in
    assert abs(datetime.fromisoformat(view["expiresAt"]).timestamp() - (before + 120)) < 5

    row = upload_row(settings, view["id"])
    assert row["owner"] == "user-a" and row["state"] == "pending"
    assert row["size_announced"] == len(content) and row["multipart_upload_id"] is None
    assert row["bucket"] == bucket and row["key"] == view["key"]
    before_bytes = call("GET", f"/uploads/{view['id']}").body
    assert before_bytes["state"] == "pending" and before_bytes["completed"] is False

    response = requests.post(
        post["url"],
        data=fields,
        files={"file": ("report.csv", content, "text/csv")},
        timeout=30,
    )
    assert response.status_code in (200, 201, 204), response.text
    stored = s3.get_object(Bucket=bucket, Key=view["key"])
    assert stored["Body"].read() == content
    assert stored["ContentType"] == "text/csv"
    # Before the S3 event is processed the row is still pending, but S3 has the object.
    after_bytes = call("GET", f"/uploads/{view['id']}").body
    assert after_bytes["state"] == "pending" and after_bytes["completed"] is True

    # a single upload has no parts to sign or complete
    assert call("POST", f"/uploads/{view['id']}/parts", body={"partNumbers": [1]}).status == 409
    assert call("POST", f"/uploads/{view['id']}/complete", body={"parts": []}).status == 409
    # and once its object is in S3 it can no longer be aborted
    aborted = call("DELETE", f"/uploads/{view['id']}")
    assert aborted.status == 409 and "completed" in aborted.message
    assert upload_row(settings, view["id"])["state"] == "pending"


def test_multipart_upload_resumed_after_losing_the_client(
    lambda_env, settings, s3, bucket, monkeypatch, payload
):
    view = start_multipart(monkeypatch, OFFLOAD_PART_URL_BATCH=2, OFFLOAD_URL_EXPIRY_S=300)
    assert view["type"] == "multipart"
    assert view["partSize"] == 5 * MiB
    assert view["partCount"] == 4
    assert [p["partNumber"] for p in view["partUrls"]] == [1, 2]  # first batch only
    for part in view["partUrls"]:
        url = urlsplit(part["url"])
        query = {name: values[0] for name, values in parse_qs(url.query).items()}
        assert unquote(url.path).endswith("/" + view["key"])
        assert query["X-Amz-Expires"] == "300"
        assert query["X-Amz-SignedHeaders"] == "content-length;host"
        assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
        assert query["partNumber"] == str(part["partNumber"])
        assert "X-Amz-Signature" in query
    row = upload_row(settings, view["id"])
    assert query["uploadId"] == row["multipart_upload_id"]
    head = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in head] == [(view["key"], query["uploadId"])]

    # The client uploads parts 2 and 1, then "crashes" (all it knew is gone).
    for part in reversed(view["partUrls"]):
        put_part(part["url"], chunk(payload, view["partSize"], part["partNumber"]))
    upload_id = view["id"]
    del view

    # A new client asks what S3 already has ...
    status = call("GET", f"/uploads/{upload_id}")
    assert status.status == 200
    assert status.body["state"] == "pending" and status.body["multipartOpen"] is True
    assert status.body["completed"] is False
    assert status.body["partCount"] == 4 and status.body["partSize"] == 5 * MiB
    uploaded = status.body["uploadedParts"]
    assert [(p["partNumber"], p["size"]) for p in uploaded] == [(1, 5 * MiB), (2, 5 * MiB)]
    have = {p["partNumber"]: p["etag"] for p in uploaded}
    missing = [n for n in range(1, status.body["partCount"] + 1) if n not in have]
    assert missing == [3, 4]

    # ... asks for URLs of the missing parts, uploads them, and completes.
    more = call("POST", f"/uploads/{upload_id}/parts", body={"partNumbers": missing})
    assert more.status == 200, more.body
    assert [p["partNumber"] for p in more.body["partUrls"]] == [3, 4]
    for part in more.body["partUrls"]:
        have[part["partNumber"]] = put_part(
            part["url"], chunk(payload, 5 * MiB, part["partNumber"])
        )
    done = call(
        "POST",
        f"/uploads/{upload_id}/complete",
        body={"parts": [{"partNumber": n, "etag": e} for n, e in sorted(have.items())]},
    )
    assert done.status == 200, done.body
    assert done.body["completed"] is True and done.body["etag"].strip('"').endswith("-4")

    stored = s3.get_object(Bucket=bucket, Key=done.body["key"])
    assert stored["ContentLength"] == SIZE
    assert stored["ContentType"] == "video/mp4"
    assert hashlib.sha256(stored["Body"].read()).digest() == hashlib.sha256(payload).digest()

    # S3 no longer has the multipart upload; the row waits for the S3 event (enqueue path).
    after = call("GET", f"/uploads/{upload_id}")
    assert after.body["state"] == "pending"
    assert after.body["multipartOpen"] is False and after.body["uploadedParts"] == []
    assert after.body["completed"] is True  # not to be mistaken for an aborted upload
    again = call(
        "POST",
        f"/uploads/{upload_id}/complete",
        body={"parts": [{"partNumber": n, "etag": e} for n, e in sorted(have.items())]},
    )
    assert again.status == 409 and "already completed" in again.message
    assert upload_row(settings, upload_id)["state"] == "pending"  # not taken for aborted
    assert call("DELETE", f"/uploads/{upload_id}").status == 409


def test_each_part_url_signs_its_parts_exact_size(lambda_env, monkeypatch):
    """moto does not check signatures: S3's check is recomputed with botocore's signer
    (tests/support/sigv4.py). Each URL signs ``content-length`` with its own part's size (the
    last part's being the remainder), so S3 refuses any other length, and a body sent without
    a length (chunked) as well."""
    view = start_multipart(monkeypatch, OFFLOAD_PART_URL_BATCH=2)
    more = call("POST", f"/uploads/{view['id']}/parts", body={"partNumbers": [4, 3]})
    assert more.status == 200, more.body
    urls = {p["partNumber"]: p["url"] for p in view["partUrls"] + more.body["partUrls"]}
    sizes = {1: 5 * MiB, 2: 5 * MiB, 3: 5 * MiB, 4: SIZE - 15 * MiB}
    assert sorted(urls) == sorted(sizes) and sizes[4] == MiB + 12_345
    keys = (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
    for number, url in urls.items():
        assert sigv4.signed_headers(url) == ["content-length", "host"]
        size = sizes[number]
        assert sigv4.accepts(url, "PUT", {"Content-Length": str(size)}, *keys), number
        for other in (size - 1, size + 1, 5 * 1024 * MiB, sizes[4] if number < 4 else 5 * MiB):
            assert not sigv4.accepts(url, "PUT", {"Content-Length": str(other)}, *keys), other
        chunked = {"Transfer-Encoding": "chunked"}
        assert not sigv4.accepts(url, "PUT", chunked, *keys)


def test_uploaded_parts_are_listed_across_pages(lambda_env, monkeypatch, payload):
    monkeypatch.setattr("offload.uploads.LIST_PARTS_PAGE", 1)
    view = start_multipart(monkeypatch)
    for part in view["partUrls"][:3]:
        put_part(part["url"], chunk(payload, view["partSize"], part["partNumber"]))
    status = call("GET", f"/uploads/{view['id']}")
    assert [p["partNumber"] for p in status.body["uploadedParts"]] == [1, 2, 3]


def test_abort_multipart_upload(lambda_env, settings, s3, bucket, monkeypatch, payload):
    view = start_multipart(monkeypatch)
    put_part(view["partUrls"][0]["url"], chunk(payload, view["partSize"], 1))
    multipart_id = upload_row(settings, view["id"])["multipart_upload_id"]

    aborted = call("DELETE", f"/uploads/{view['id']}")
    assert aborted.status == 200, aborted.body
    assert aborted.body["state"] == "aborted"
    with pytest.raises(s3.exceptions.NoSuchUpload):
        s3.list_parts(Bucket=bucket, Key=view["key"], UploadId=multipart_id)
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert upload_row(settings, view["id"])["state"] == "aborted"

    status = call("GET", f"/uploads/{view['id']}")
    assert status.status == 200 and status.body["state"] == "aborted"
    assert "uploadedParts" not in status.body and "completed" not in status.body
    assert call("DELETE", f"/uploads/{view['id']}").status == 200  # idempotent
    more = call("POST", f"/uploads/{view['id']}/parts", body={"partNumbers": [2]})
    assert more.status == 409 and "aborted" in more.message
    done = call(
        "POST", f"/uploads/{view['id']}/complete", body={"parts": [{"partNumber": 1, "etag": "x"}]}
    )
    assert done.status == 409


def test_multipart_upload_expired_by_the_lifecycle_rule_is_not_completed(
    lambda_env, settings, s3, bucket, monkeypatch, payload
):
    """S3 forgets a multipart upload both when it is completed and when the lifecycle rule
    aborts it: ``completed`` tells the two apart for a client deciding whether to upload
    again."""
    view = start_multipart(monkeypatch)
    put_part(view["partUrls"][0]["url"], chunk(payload, view["partSize"], 1))
    multipart_id = upload_row(settings, view["id"])["multipart_upload_id"]
    s3.abort_multipart_upload(Bucket=bucket, Key=view["key"], UploadId=multipart_id)

    status = call("GET", f"/uploads/{view['id']}").body
    assert status["state"] == "pending" and status["multipartOpen"] is False
    assert status["completed"] is False


def test_abort_single_upload_before_bytes_arrive(lambda_env, settings):
    created = call(
        "POST", "/uploads", body={"filename": "a.png", "size": 10, "contentType": "image/png"}
    )
    aborted = call("DELETE", f"/uploads/{created.body['id']}")
    assert aborted.status == 200 and aborted.body["state"] == "aborted"
    assert upload_row(settings, created.body["id"])["state"] == "aborted"


def test_uploaded_or_queued_upload_cannot_be_aborted_or_completed(
    lambda_env, settings, monkeypatch
):
    view = start_multipart(monkeypatch)
    from lambdas import runtime

    store = runtime.run(runtime.uploads())
    uploaded = runtime.run(
        store.mark_uploaded(view["id"], size_actual=SIZE, etag='"e-4"', version_id=None)
    )
    complete = call(
        "POST",
        f"/uploads/{view['id']}/complete",
        body={"parts": [{"partNumber": n, "etag": "e"} for n in range(1, 5)]},
    )
    assert complete.status == 409 and "already completed" in complete.message
    aborted = call("DELETE", f"/uploads/{view['id']}")
    assert aborted.status == 409
    assert upload_row(settings, view["id"])["state"] == "uploaded"
    runtime.run(store.mark_queued(uploaded))
    assert call("DELETE", f"/uploads/{view['id']}").status == 409
    assert call("GET", f"/uploads/{view['id']}").body["state"] == "queued"


def test_complete_with_a_wrong_etag_is_refused_and_can_be_fixed(
    lambda_env, s3, bucket, monkeypatch, payload
):
    view = start_multipart(monkeypatch)
    etags = {
        p["partNumber"]: put_part(p["url"], chunk(payload, view["partSize"], p["partNumber"]))
        for p in view["partUrls"]
    }
    wrong = dict(etags) | {3: '"0123456789abcdef0123456789abcdef"'}
    refused = call(
        "POST",
        f"/uploads/{view['id']}/complete",
        body={"parts": [{"partNumber": n, "etag": e} for n, e in sorted(wrong.items())]},
    )
    assert refused.status == 400, refused.body
    assert "InvalidPart" in refused.message and refused.body["field"] == "parts"
    with pytest.raises(s3.exceptions.ClientError):
        s3.head_object(Bucket=bucket, Key=view["key"])
    # the multipart upload is still open: the client can complete it with the right etags
    # (given without quotes this time: both forms are accepted)
    fixed = call(
        "POST",
        f"/uploads/{view['id']}/complete",
        body={"parts": [{"partNumber": n, "etag": e.strip('"')} for n, e in etags.items()]},
    )
    assert fixed.status == 200, fixed.body
    assert s3.head_object(Bucket=bucket, Key=view["key"])["ContentLength"] == SIZE


def test_complete_never_replaces_an_object_already_under_the_key(
    lambda_env, settings, s3, bucket, monkeypatch, payload
):
    """The API completes with ``If-None-Match: *``: S3 refuses to complete over an object. Here
    another multipart upload of the same key completed first; that takes the bucket's own
    credentials (a client's part URLs are signed for one upload id and part number each)."""
    view = start_multipart(monkeypatch)
    etags = {
        p["partNumber"]: put_part(p["url"], chunk(payload, view["partSize"], p["partNumber"]))
        for p in view["partUrls"]
    }
    first = upload_generated(s3, bucket, view["key"], SIZE, part_size=5 * MiB)

    refused = complete_parts(view["id"], etags)
    assert refused.status == 409, refused.body
    assert refused.message == (
        "an object already exists under this upload's key; S3 refused to replace it, so this"
        " upload cannot be completed"
    )
    stored = s3.get_object(Bucket=bucket, Key=view["key"])["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == first
    # The row waits for that object's event; this multipart upload is left to the lifecycle rule.
    status = call("GET", f"/uploads/{view['id']}").body
    assert (status["state"], status["multipartOpen"]) == ("pending", True)
    assert upload_row(settings, view["id"])["state"] == "pending"


def test_a_completed_multipart_key_cannot_be_written_again_with_the_clients_urls(
    lambda_env, s3, bucket, monkeypatch, payload
):
    """What a client holds after completing: part URLs still within their lifetime and the
    complete route. S3 refuses the parts (the multipart upload is gone) and the API refuses a
    second complete: the object stays the one the client completed."""
    view = start_multipart(monkeypatch, OFFLOAD_URL_EXPIRY_S=900)
    etags = {
        p["partNumber"]: put_part(p["url"], chunk(payload, view["partSize"], p["partNumber"]))
        for p in view["partUrls"]
    }
    assert complete_parts(view["id"], etags).status == 200
    completed = s3.head_object(Bucket=bucket, Key=view["key"])["ETag"]

    other = os.urandom(SIZE)  # other bytes, the same size
    for part in view["partUrls"]:
        data = chunk(other, view["partSize"], part["partNumber"])
        response = requests.put(part["url"], data=data, timeout=30)
        assert response.status_code >= 400  # S3: 404 NoSuchUpload (moto 5.2.5: a 500)
    again = complete_parts(view["id"], etags)
    assert again.status == 409 and again.message == "upload is already completed"
    assert s3.head_object(Bucket=bucket, Key=view["key"])["ETag"] == completed


def test_complete_checks_parts_against_the_plan(lambda_env, s3, bucket, monkeypatch, payload):
    view = start_multipart(monkeypatch)
    urls = {p["partNumber"]: p["url"] for p in view["partUrls"]}
    etags = {n: put_part(urls[n], chunk(payload, view["partSize"], n)) for n in (1, 2, 4)}

    def complete(parts: dict[int, str]):
        return call(
            "POST",
            f"/uploads/{view['id']}/complete",
            body={"parts": [{"partNumber": n, "etag": e} for n, e in sorted(parts.items())]},
        )

    not_listed = complete(etags)
    assert not_listed.status == 400 and "missing: 3" in not_listed.message
    not_uploaded = complete(etags | {3: '"whatever"'})
    assert not_uploaded.status == 400 and "not uploaded yet: 3" in not_uploaded.message
    etags[3] = put_part(urls[3], b"too short")
    wrong_size = complete(etags)
    assert wrong_size.status == 400 and "part 3 has 9 bytes" in wrong_size.message
    with pytest.raises(s3.exceptions.ClientError):
        s3.head_object(Bucket=bucket, Key=view["key"])
    duplicate = call(
        "POST",
        f"/uploads/{view['id']}/complete",
        body={"parts": [{"partNumber": 1, "etag": etags[1]}] * 2},
    )
    assert duplicate.status == 400 and "twice" in duplicate.message


def test_multipart_upload_of_exactly_the_single_limit_plus_one(lambda_env, monkeypatch):
    """The threshold: size == single_upload_max_bytes is one POST, one byte more is multipart
    (one part: S3 allows a last part under 5 MiB)."""
    configure(monkeypatch, OFFLOAD_SINGLE_UPLOAD_MAX_BYTES=1000)
    body = {"filename": "x.bin", "contentType": "application/octet-stream"}
    assert call("POST", "/uploads", body=body | {"size": 1000}).body["type"] == "single"
    over = call("POST", "/uploads", body=body | {"size": 1001}).body
    assert over["type"] == "multipart"
    assert (over["partCount"], over["partSize"], len(over["partUrls"])) == (1, 5 * MiB, 1)


def test_multipart_upload_is_aborted_when_its_row_cannot_be_stored(
    lambda_env, s3, bucket, monkeypatch
):
    configure(monkeypatch, OFFLOAD_SINGLE_UPLOAD_MAX_BYTES=1)
    from offload.db.uploads import UploadStore

    async def broken(self, **kwargs):
        raise psycopg.OperationalError("connection lost")

    monkeypatch.setattr(UploadStore, "create", broken)
    answer = call("POST", "/uploads", body={"filename": "a.bin", "size": 6 * MiB,
                                            "contentType": "application/octet-stream"})  # fmt: skip
    assert answer.status == 503 and set(answer.body) == {"message"}
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")


# --- part size: chosen at creation, stored on the row ------------------------------------------


def use_default_part_size(monkeypatch) -> None:
    """Drop lambda_env's OFFLOAD_PART_SIZE_MIB=5: the container sees the deployed default."""
    from lambdas import runtime

    monkeypatch.delenv("OFFLOAD_PART_SIZE_MIB")
    runtime.settings.cache_clear()


def send_parts(view: dict, payload: bytes, part_size: int, numbers: list[int]) -> dict[int, str]:
    """PUT each part's bytes (cut at ``part_size``) with fresh URLs from ``/parts``."""
    urls = call("POST", f"/uploads/{view['id']}/parts", body={"partNumbers": numbers})
    assert urls.status == 200, urls.body
    return {
        p["partNumber"]: put_part(p["url"], chunk(payload, part_size, p["partNumber"]))
        for p in urls.body["partUrls"]
    }


def complete_parts(upload_id: str, etags: dict[int, str]):
    return call(
        "POST",
        f"/uploads/{upload_id}/complete",
        body={"parts": [{"partNumber": n, "etag": e} for n, e in sorted(etags.items())]},
    )


def test_default_part_size_is_16_mib_and_stored(
    lambda_env, settings, s3, bucket, monkeypatch, payload
):
    use_default_part_size(monkeypatch)
    view = start_multipart(monkeypatch)
    assert (view["partSize"], view["partCount"]) == (16 * MiB, 2)
    assert [p["partNumber"] for p in view["partUrls"]] == [1, 2]
    assert upload_row(settings, view["id"])["part_size"] == 16 * MiB
    status = call("GET", f"/uploads/{view['id']}").body
    assert (status["partSize"], status["partCount"]) == (16 * MiB, 2)
    # a part number of a 5 MiB plan does not exist in this one
    assert call("POST", f"/uploads/{view['id']}/parts", body={"partNumbers": [3]}).status == 400

    etags = send_parts(view, payload, 16 * MiB, [1, 2])
    done = complete_parts(view["id"], etags)
    assert done.status == 200, done.body
    assert done.body["etag"].strip('"').endswith("-2")
    stored = s3.get_object(Bucket=bucket, Key=view["key"])
    assert hashlib.sha256(stored["Body"].read()).digest() == hashlib.sha256(payload).digest()

    # a single-request upload has no part size
    configure(monkeypatch, OFFLOAD_SINGLE_UPLOAD_MAX_BYTES=1000)
    small = {"filename": "a.txt", "size": 3, "contentType": "text/plain"}
    single = call("POST", "/uploads", body=small)
    assert single.status == 201 and "partSize" not in single.body
    assert upload_row(settings, single.body["id"])["part_size"] is None


def test_part_size_setting_is_a_minimum(lambda_env, settings, monkeypatch):
    """A file too large for 10,000 parts of the setting gets the smallest whole MiB that fits.
    (No bytes are sent: the plan is all this checks.)"""
    configure(monkeypatch, OFFLOAD_PART_SIZE_MIB=8, OFFLOAD_MAX_UPLOAD_BYTES=200 * 1024**3)
    body = {"filename": "huge.bin", "contentType": "application/octet-stream"}
    fits = call("POST", "/uploads", body=body | {"size": 80 * 1024**3}).body
    assert (fits["partSize"], fits["partCount"]) == (9 * MiB, 9103)  # 8 MiB: 10,240 parts
    assert upload_row(settings, fits["id"])["part_size"] == 9 * MiB
    small = call("POST", "/uploads", body=body | {"size": 200 * MiB}).body
    assert (small["partSize"], small["partCount"]) == (8 * MiB, 25)
    assert upload_row(settings, small["id"])["part_size"] == 8 * MiB


def test_changing_the_setting_does_not_break_an_upload_in_flight(
    lambda_env, settings, s3, bucket, monkeypatch, payload
):
    view = start_multipart(monkeypatch)  # OFFLOAD_PART_SIZE_MIB=5 (lambda_env)
    assert (view["partSize"], view["partCount"]) == (5 * MiB, 4)
    assert upload_row(settings, view["id"])["part_size"] == 5 * MiB

    configure(monkeypatch, OFFLOAD_PART_SIZE_MIB=16)  # a deploy changes the setting
    # new uploads get the new size ...
    assert start_multipart(monkeypatch)["partSize"] == 16 * MiB
    # ... while this one keeps its own: resume, more URLs and complete all plan with 5 MiB
    status = call("GET", f"/uploads/{view['id']}").body
    assert (status["partSize"], status["partCount"]) == (5 * MiB, 4)
    etags = send_parts(view, payload, 5 * MiB, [2, 3, 4])
    # part 1 cut as a 16 MiB plan would: complete checks sizes against the stored 5 MiB
    etags |= send_parts(view, payload, 16 * MiB, [1])
    wrong = complete_parts(view["id"], etags)
    assert wrong.status == 400 and f"part 1 has {16 * MiB} bytes, expected {5 * MiB}" in (
        wrong.message
    )
    etags |= send_parts(view, payload, 5 * MiB, [1])
    done = complete_parts(view["id"], etags)
    assert done.status == 200, done.body
    assert (done.body["partSize"], done.body["partCount"]) == (5 * MiB, 4)
    assert done.body["etag"].strip('"').endswith("-4")
    stored = s3.get_object(Bucket=bucket, Key=view["key"])
    assert hashlib.sha256(stored["Body"].read()).digest() == hashlib.sha256(payload).digest()


def test_upload_from_before_the_part_size_was_stored_keeps_the_5_mib_rule(
    lambda_env, settings, s3, bucket, monkeypatch, payload
):
    """A row created before migration 0002 has no part_size: it was planned with 5 MiB parts
    and must still be served that way, whatever OFFLOAD_PART_SIZE_MIB says now."""
    view = start_multipart(monkeypatch)
    with psycopg.connect(
        settings.database_url, options=f"-c search_path={settings.database_schema}"
    ) as conn:
        conn.execute("UPDATE uploads SET part_size = NULL WHERE id = %s", (view["id"],))
    assert upload_row(settings, view["id"])["part_size"] is None
    use_default_part_size(monkeypatch)  # the new code runs with the 16 MiB default

    status = call("GET", f"/uploads/{view['id']}").body
    assert (status["partSize"], status["partCount"]) == (5 * MiB, 4)
    assert status["multipartOpen"] is True
    etags = send_parts(view, payload, 5 * MiB, [1, 2, 3, 4])  # 3 and 4: outside a 16 MiB plan
    done = complete_parts(view["id"], etags)
    assert done.status == 200, done.body
    assert (done.body["partSize"], done.body["partCount"]) == (5 * MiB, 4)
    assert s3.head_object(Bucket=bucket, Key=view["key"])["ContentLength"] == SIZE
    assert upload_row(settings, view["id"])["part_size"] is None  # nothing rewrote the row
