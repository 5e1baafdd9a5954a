"""Bad requests to the API Lambda: identity, JSON, field validation, hostile file names,
part numbers, routing. Every refusal is a JSON {"message": ...} with the right 4xx, and
creates nothing."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import unicodedata

import psycopg
import pytest

from offload.keys import MAX_FILENAME_BYTES, UploadKey
from offload.uploads import MiB
from tests.support.apigw import REPO_ROOT, LambdaContext, call, configure, event

GOOD = {"filename": "photo.jpg", "size": 1234, "contentType": "image/jpeg"}


def count_uploads(settings) -> int:
    with psycopg.connect(
        settings.database_url, options=f"-c search_path={settings.database_schema}"
    ) as conn:
        return conn.execute("SELECT count(*) FROM uploads").fetchone()[0]


def refused(response, status: int, field: str | None = None, words: str = "") -> None:
    assert response.status == status, (response.status, response.body)
    assert response.headers["content-type"] == "application/json"
    assert isinstance(response.body["message"], str) and response.body["message"]
    assert set(response.body) <= {"message", "field"}
    if field is not None:
        assert response.body.get("field") == field, response.body
    assert words.lower() in response.message.lower()


ROUTES = [
    ("POST", "/uploads", GOOD),
    ("GET", "/uploads", None),
    ("GET", "/uploads/abc", None),
    ("POST", "/uploads/abc/parts", {"partNumbers": [1]}),
    ("POST", "/uploads/abc/complete", {"parts": []}),
    ("DELETE", "/uploads/abc", None),
    ("GET", "/jobs", None),
    ("GET", "/jobs/abc", None),
    ("POST", "/jobs/abc/retry", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest.mark.parametrize(
    "identity",
    [
        {"sub": None},  # no authorizer context at all
        {"sub": None, "claims": {"email": "a@example.com"}},  # claims without sub
        {"sub": ""},
        {"sub": "../other-user"},  # not usable as a key segment
        {"sub": None, "claims": {"sub": 123}},
    ],
    ids=["no-authorizer", "no-sub", "empty-sub", "path-sub", "numeric-sub"],
)
def test_every_route_needs_a_caller(lambda_env, settings, method, path, body, identity):
    kwargs = {"body": body} if body is not None else {}
    refused(call(method, path, **identity, **kwargs), 401, words="identity")
    assert count_uploads(settings) == 0


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({k: v for k, v in GOOD.items() if k != "size"}, "size", "required"),
        (GOOD | {"size": 0}, "size", "greater than 0"),
        (GOOD | {"size": -5}, "size", "greater than 0"),
        (GOOD | {"size": 1.5}, "size", "integer"),
        (GOOD | {"size": 1024.0}, "size", "integer"),
        (GOOD | {"size": "1024"}, "size", "integer"),
        (GOOD | {"size": True}, "size", "integer"),
        (GOOD | {"size": None}, "size", "integer"),
        (GOOD | {"size": 50 * 1024**3 + 1}, "size", "at most"),
        (GOOD | {"size": 10**30}, "size", "at most"),
        ({k: v for k, v in GOOD.items() if k != "filename"}, "filename", "non-empty"),
        (GOOD | {"filename": ""}, "filename", "non-empty"),
        (GOOD | {"filename": "   "}, "filename", "non-empty"),
        (GOOD | {"filename": 42}, "filename", "string"),
        (GOOD | {"filename": "a" * 20_000}, "filename", "at most"),
        ({k: v for k, v in GOOD.items() if k != "contentType"}, "contentType", ""),
        (GOOD | {"contentType": "application/x-msdownload"}, "contentType", "not allowed"),
        (GOOD | {"contentType": "text/html"}, "contentType", "not allowed"),
        (GOOD | {"contentType": "image/*"}, "contentType", "media type"),
        (GOOD | {"contentType": "*/*"}, "contentType", "media type"),
        (GOOD | {"contentType": "jpeg"}, "contentType", "media type"),
        (GOOD | {"contentType": "image/jpeg\r\nX-Evil: 1"}, "contentType", "media type"),
        (GOOD | {"contentType": ["image/jpeg"]}, "contentType", "string"),
    ],
)
def test_create_refuses_invalid_fields(lambda_env, settings, body, field, words):
    refused(call("POST", "/uploads", body=body), 400, field, words)
    assert count_uploads(settings) == 0


def test_size_limit_comes_from_settings(lambda_env, monkeypatch):
    configure(monkeypatch, OFFLOAD_MAX_UPLOAD_BYTES=10 * MiB)
    refused(call("POST", "/uploads", body=GOOD | {"size": 10 * MiB + 1}), 400, "size", "at most")
    assert call("POST", "/uploads", body=GOOD | {"size": 10 * MiB}).status == 201


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("{not json", "not valid JSON"),
        ('{"filename": "a.jpg", "size": 1,', "not valid JSON"),
        ("", "required"),
        (None, "required"),
        ("[1, 2]", "JSON object"),
        ('"a string"', "JSON object"),
        ("null", "JSON object"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),  # json.loads: RecursionError, a 500
    ],
    ids=lambda value: value[:24] if isinstance(value, str) else repr(value),
)
def test_create_refuses_malformed_bodies(lambda_env, settings, raw, words):
    refused(call("POST", "/uploads", raw_body=raw), 400, words=words)
    assert count_uploads(settings) == 0


def test_base64_encoded_body_is_accepted(lambda_env):
    created = call("POST", "/uploads", body=GOOD, base64_body=True)
    assert created.status == 201, created.body
    from lambdas import api

    broken = event("POST", "/uploads", raw_body="%%%not base64")
    broken["isBase64Encoded"] = True
    answer = api.handler(broken, LambdaContext())
    assert answer["statusCode"] == 400
    assert "not valid JSON" in json.loads(answer["body"])["message"]


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("text/plain; charset=utf-8", "text/plain"),
        ("IMAGE/PNG", "image/png"),
        ("  Video/MP4 ", "video/mp4"),
        ("application/PDF;name=x.pdf", "application/pdf"),
    ],
)
def test_content_type_is_normalised(lambda_env, given, stored):
    created = call("POST", "/uploads", body=GOOD | {"contentType": given})
    assert created.status == 201, created.body
    assert created.body["contentType"] == stored
    assert created.body["post"]["fields"]["Content-Type"] == stored


def test_allowed_types_from_settings_with_wildcards(lambda_env, monkeypatch):
    configure(monkeypatch, OFFLOAD_ALLOWED_CONTENT_TYPES="Image/*, application/pdf")
    assert call("POST", "/uploads", body=GOOD | {"contentType": "image/webp"}).status == 201
    assert call("POST", "/uploads", body=GOOD | {"contentType": "application/pdf"}).status == 201
    refused(call("POST", "/uploads", body=GOOD | {"contentType": "video/mp4"}), 400, "contentType")


HOSTILE_NAMES = [
    "../../../etc/passwd",
    "..",
    "/",
    "a/../../b.txt",
    "C:\\Windows\\system32\\evil.exe",
    "nul\x00byte.txt",
    "x" * 4096,
    "é" * 3000,  # 6,000 bytes of UTF-8: cut on a character boundary
    "invoice\u202egpj.exe",  # right-to-left override
    "\u200f\u200e\u202b\u2066name\u2069.pdf",
    "line\nbreak\r\n.txt",
    "   .hidden",
    "😀" * 100,
    "%2e%2e%2fescape",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_hostile_filenames_stay_inside_the_callers_prefix(lambda_env, settings, name):
    created = call("POST", "/uploads", body=GOOD | {"filename": name})
    assert created.status == 201, created.body
    key = created.body["key"]
    prefix = f"uploads/user-a/{created.body['id']}/"
    assert key.startswith(prefix)
    last = key[len(prefix) :]
    assert last and "/" not in last and "\\" not in last and not last.startswith(".")
    assert len(last.encode()) <= MAX_FILENAME_BYTES
    assert len(key.encode()) <= len(prefix) + MAX_FILENAME_BYTES <= 1024
    assert not any(unicodedata.category(ch) in ("Cc", "Cf") for ch in last)
    assert UploadKey.parse(key) == UploadKey("user-a", created.body["id"], last)
    assert created.body["filename"] == last
    assert created.body["post"]["fields"]["key"] == key


def test_part_numbers_are_checked(lambda_env, monkeypatch):
    configure(monkeypatch, OFFLOAD_SINGLE_UPLOAD_MAX_BYTES=1, OFFLOAD_PART_URL_BATCH=3)
    created = call("POST", "/uploads", body=GOOD | {"size": 16 * MiB})
    assert created.body["partCount"] == 4
    path = f"/uploads/{created.body['id']}/parts"
    for numbers, words in [
        ([0], "outside 1..4"),
        ([10_001], "outside 1..4"),
        ([5], "outside 1..4"),
        ([-1], "outside"),
        ([1, 1], "repeat"),
        ([1, 2, 3, 4], "at most 3"),
        ([], "non-empty"),
        (["1"], "integer"),
        ([1.0], "integer"),
        ([True], "integer"),
        ("1", "list"),
    ]:
        refused(call("POST", path, body={"partNumbers": numbers}), 400, "partNumbers", words)
    refused(call("POST", path, body={"parts": [1]}), 400, "partNumbers")
    refused(call("POST", path, raw_body="{"), 400, words="JSON")
    ok = call("POST", path, body={"partNumbers": [4, 2, 3]})
    assert ok.status == 200 and [p["partNumber"] for p in ok.body["partUrls"]] == [4, 2, 3]


def test_completed_parts_are_checked(lambda_env, monkeypatch):
    configure(monkeypatch, OFFLOAD_SINGLE_UPLOAD_MAX_BYTES=1)
    created = call("POST", "/uploads", body=GOOD | {"size": 11 * MiB})  # 3 parts
    path = f"/uploads/{created.body['id']}/complete"
    all_parts = [{"partNumber": n, "etag": f'"{n:032x}"'} for n in (1, 2, 3)]
    for parts, field, words in [
        ([], "parts", "non-empty"),
        ("x", "parts", "list"),
        ([1, 2, 3], "parts", "object"),
        ([*all_parts, {"partNumber": 0, "etag": "e"}], "parts.partNumber", "outside"),
        ([*all_parts, {"partNumber": 10_001, "etag": "e"}], "parts.partNumber", "outside"),
        ([*all_parts, {"partNumber": 4, "etag": "e"}], "parts.partNumber", "outside 1..3"),
        ([{"partNumber": "1", "etag": "e"}], "parts.partNumber", "integer"),
        ([{"partNumber": 1, "etag": 5}], "parts.etag", "etag"),
        ([{"partNumber": 1, "etag": '""'}], "parts.etag", "etag"),
        (all_parts[:2], "parts", "missing: 3"),
        ([*all_parts, all_parts[0]], "parts.partNumber", "twice"),
    ]:
        refused(call("POST", path, body={"parts": parts}), 400, field, words)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/nothing-here"),
        ("PUT", "/uploads"),
        ("DELETE", "/uploads"),
        ("PATCH", "/uploads/abc"),
        ("GET", "/uploads/abc/parts"),
        ("DELETE", "/jobs/abc"),
        ("PUT", "/jobs"),  # POST /jobs is a route (requested jobs)
    ],
)
def test_unknown_routes_are_json_404(lambda_env, method, path):
    refused(call(method, path), 404, words="no such route")


def test_invalid_ids_are_404(lambda_env):
    for path in ("/uploads/" + "a" * 300, "/uploads/a.b", "/uploads/%2e%2e", "/uploads/abc\n"):
        refused(call("GET", path), 404, words="upload not found")
    for path in ("/jobs/" + "a" * 300, "/jobs/abc\n"):  # `$` matches before a final newline
        refused(call("GET", path), 404, words="job not found")


@pytest.mark.parametrize(
    "fields",
    [{"t": 1, "i": "a\x00b"}, {"t": 1, "i": "job\n"}, {"t": 1, "i": "x" * 300}],
    ids=["nul", "newline", "long"],
)
def test_a_cursor_holding_an_impossible_job_id_is_400(lambda_env, fields):
    """A NUL in the cursor's id reached PostgreSQL, which refuses it in text: a 500."""
    token = base64.urlsafe_b64encode(json.dumps(fields).encode()).decode().rstrip("=")
    refused(call("GET", "/jobs", query={"cursor": token}), 400, "cursor", "not valid")


def test_logs_carry_ids_but_no_urls_bodies_or_tokens(lambda_env, monkeypatch):
    from lambdas import api

    stream = io.StringIO()
    monkeypatch.setattr(api.logger.registered_handler, "stream", stream)
    configure(monkeypatch, OFFLOAD_SINGLE_UPLOAD_MAX_BYTES=1)
    multipart = call("POST", "/uploads", body=GOOD | {"size": 6 * MiB, "filename": "secret.jpg"})
    call("POST", f"/uploads/{multipart.body['id']}/parts", body={"partNumbers": [2]})
    configure(monkeypatch, OFFLOAD_SINGLE_UPLOAD_MAX_BYTES=100 * MiB)
    single = call("POST", "/uploads", body=GOOD, request_id="req-1234")
    call("POST", "/uploads", body=GOOD | {"size": -1})
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line]
    text = json.dumps(lines)
    for secret in ("X-Amz-Signature", "x-amz-signature", "Signature=", "policy", "eyJraWQi"):
        assert secret not in text
    assert "secret.jpg" not in text  # file names are user data: not logged
    assert single.body["post"]["fields"]["x-amz-signature"] not in text
    requests_logged = [line for line in lines if line.get("message") == "request"]
    assert len(requests_logged) == 4
    assert any(line.get("correlation_id") == "req-1234" for line in requests_logged)
    created = [line for line in lines if line.get("message") == "upload created"]
    assert {line["upload_id"] for line in created} == {multipart.body["id"], single.body["id"]}
    assert all(line.get("user") == "user-a" for line in created)


def test_import_is_light_and_cors_is_configurable():
    """A fresh interpreter: importing the handler loads neither boto3, psycopg, bullmq nor the
    X-Ray SDK; with OFFLOAD_CORS_ORIGIN set, preflights and answers carry CORS headers."""
    script = """
import json, sys
import lambdas.api as api
heavy = [m for m in ("boto3", "psycopg", "psycopg_pool", "bullmq", "aws_xray_sdk")
         if m in sys.modules]
from tests.support.apigw import LambdaContext, event
pre = api.handler(event("OPTIONS", "/uploads", sub=None,
                        headers={"Origin": "https://app.example.com"}), LambdaContext())
denied = api.handler(event("GET", "/jobs", sub=None,
                           headers={"Origin": "https://app.example.com"}), LambdaContext())
other = api.handler(event("GET", "/jobs", sub=None,
                          headers={"Origin": "https://evil.example.net"}), LambdaContext())
print(json.dumps({"heavy": heavy, "pre": pre, "denied": denied, "other": other}))
"""
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO_ROOT),
        "OFFLOAD_CORS_ORIGIN": "https://app.example.com, https://admin.example.com",
        "POWERTOOLS_TRACE_DISABLED": "1",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []

    def headers(response):
        merged = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
        for name, values in (response.get("multiValueHeaders") or {}).items():
            merged.setdefault(name.lower(), ",".join(values))
        return merged

    assert result["pre"]["statusCode"] == 204
    assert headers(result["pre"])["access-control-allow-origin"] == "https://app.example.com"
    assert "POST" in headers(result["pre"])["access-control-allow-methods"]
    assert result["denied"]["statusCode"] == 401
    assert headers(result["denied"])["access-control-allow-origin"] == "https://app.example.com"
    # A page may read when to try again after a 429 (a quota: test_upload_quotas.py).
    assert "Retry-After" in headers(result["denied"])["access-control-expose-headers"]
    assert "access-control-allow-origin" not in headers(result["other"])


@pytest.mark.slow
def test_database_out_of_reach_is_503_json(lambda_env, monkeypatch):
    """PostgreSQL down (here: nothing listens on the port): the caller gets a JSON 503 it may
    retry, after the pool's 5 s wait, not a stack trace or a Lambda error."""
    from tests.support.servers import free_port

    configure(monkeypatch, DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/test")
    answer = call("GET", "/jobs")
    refused(answer, 503, words="temporarily unavailable")
