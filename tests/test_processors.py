"""The built-in processors against a real moto S3 server: streamed reads pinned to the job's
object, manifests and thumbnails at deterministic keys, and permanent errors for inputs no
retry can fix."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from PIL import Image

from fargate_worker import context as context_module
from fargate_worker.context import JobContext
from fargate_worker.errors import PermanentJobError
from fargate_worker.processors import builtin, load
from fargate_worker.processors.builtin import (
    detect_content_type,
    inspect_object,
    output_key,
    thumbnail,
)
from fargate_worker.processors.s3stream import (
    DEFAULT_CHUNK_SIZE,
    StreamSizeMismatch,
    open_object,
    spool,
)
from fargate_worker.s3grants import JobGrants
from offload.aws import s3_client
from offload.jobs import JobRef
from offload.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
UPLOAD_KEY = "uploads/user-1/up-1/photo.bin"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_ctx(endpoint: str, bucket: str, key: str, **ref: Any) -> tuple[JobContext, list]:
    """A processor's context whose S3 requests are presigned by the worker's own rules
    (``JobGrants``), in this process instead of over a child's pipe."""
    progress: list = []
    job = JobRef(bucket=bucket, key=key, **ref)
    ctx = JobContext(
        job_id="job-1",
        name="test",
        attempt=1,
        data=job.to_data(),
        settings=Settings(s3_endpoint_url=endpoint),
        send_progress=progress.append,
        presign=JobGrants(job, lambda: s3_client(endpoint)).presign,
    )
    return ctx, progress


def image_bytes(size: tuple[int, int], fmt: str, mode: str = "RGB", **save: Any) -> bytes:
    image = Image.new(mode, size)
    # A gradient, so the encoded file is not trivially small and decoding does real work.
    image.paste((200, 30, 30) if mode == "RGB" else (200, 30, 30, 128), (0, 0, size[0] // 2, 10))
    out = io.BytesIO()
    image.save(out, fmt, **save)
    return out.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A structurally valid PNG that claims width x height pixels in a few dozen bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def read_object(s3, bucket: str, key: str) -> tuple[bytes, dict]:
    response = s3.get_object(Bucket=bucket, Key=key)
    return response["Body"].read(), response


# --- output keys -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("uploads/user-1/up-1/photo.jpg", "processed/user-1/up-1/manifest.json"),
        ("demo/photo.jpg", "processed/demo/photo.jpg.manifest.json"),
        ("uploads/user-1/photo.jpg", "processed/uploads/user-1/photo.jpg.manifest.json"),
        ("uploads/bad:owner/up-1/x", "processed/uploads/bad:owner/up-1/x.manifest.json"),
    ],
)
def test_output_key_follows_the_upload_layout_or_falls_back(key: str, expected: str) -> None:
    assert output_key(key, "manifest.json") == expected


def test_both_processors_are_registered() -> None:
    registry = load(["fargate_worker.processors.builtin"])
    assert registry["inspect"].fn is inspect_object
    assert registry["thumbnail"].fn is thumbnail


# --- content type detection ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "complete", "expected"),
    [
        (b"hello\nworld\n", True, "text/plain"),
        ("h\u00e9".encode()[:-1], True, "application/octet-stream"),  # é cut, whole object
        ("ab\u00e9".encode()[:-1], False, "text/plain"),  # é cut by the sniff window only
        (b"\x00\x01\x02binary", True, "application/octet-stream"),
        (b"", True, "application/octet-stream"),
        (PNG_SIGNATURE + b"\0" * 32, True, "image/png"),
        (b"%PDF-1.7\n", True, "application/pdf"),
    ],
)
def test_detect_content_type(head: bytes, complete: bool, expected: str) -> None:
    assert detect_content_type(head, complete) == expected


# --- inspect -------------------------------------------------------------------------------


def test_inspect_small_text_file_writes_a_manifest(moto_endpoint, s3, bucket) -> None:
    body = "h\u00e9llo, world\n".encode()
    s3.put_object(Bucket=bucket, Key=UPLOAD_KEY, Body=body, ContentType="text/x-custom")
    ctx, progress = make_ctx(moto_endpoint, bucket, UPLOAD_KEY)

    result = inspect_object(ctx)

    sha = hashlib.sha256(body).hexdigest()
    assert result == {
        "manifest_key": "processed/user-1/up-1/manifest.json",
        "sha256": sha,
        "size": len(body),
        "content_type": "text/plain",
    }
    raw, response = read_object(s3, bucket, result["manifest_key"])
    assert response["ContentType"] == "application/json"
    manifest = json.loads(raw)
    assert manifest.pop("processed_at").endswith("+00:00")
    assert manifest == {
        "source_bucket": bucket,
        "source_key": UPLOAD_KEY,
        "version_id": None,
        "etag": hashlib.md5(body).hexdigest(),  # unquoted
        "size": len(body),
        "sha256": sha,
        "content_type": "text/plain",
        "s3_content_type": "text/x-custom",
        "job_id": "job-1",
    }
    assert progress[-1] == 100


def test_inspect_streams_a_multi_chunk_object(moto_endpoint, s3, bucket, monkeypatch) -> None:
    monkeypatch.setattr(context_module, "PROGRESS_MIN_INTERVAL_S", 0)  # see every report
    body = PNG_SIGNATURE + os.urandom(5 * DEFAULT_CHUNK_SIZE)
    s3.put_object(Bucket=bucket, Key=UPLOAD_KEY, Body=body)
    ctx, progress = make_ctx(moto_endpoint, bucket, UPLOAD_KEY)

    result = inspect_object(ctx)

    assert result["sha256"] == hashlib.sha256(body).hexdigest()
    assert result["size"] == len(body)
    assert result["content_type"] == "image/png"
    manifest = json.loads(read_object(s3, bucket, result["manifest_key"])[0])
    assert manifest["sha256"] == result["sha256"]
    assert manifest["content_type"] == "image/png"
    assert manifest["s3_content_type"] == "binary/octet-stream"  # S3's default
    # One report per chunk, increasing, 100 only once the manifest is written.
    assert len(progress) >= 6
    assert progress == sorted(progress)
    assert progress[-1] == 100 and progress[-2] == 99 and 100 not in progress[:-1]
    assert 0 < progress[2] < 99


def test_chunks_are_bounded_in_size(moto_endpoint, s3, bucket) -> None:
    body = os.urandom(3 * DEFAULT_CHUNK_SIZE + 17)
    s3.put_object(Bucket=bucket, Key="demo/blob", Body=body)
    with open_object(s3, JobRef(bucket, "demo/blob")) as obj:
        sizes = [len(chunk) for chunk in obj.chunks()]
    assert sizes == [DEFAULT_CHUNK_SIZE] * 3 + [17]


def test_inspect_rerun_overwrites_the_same_manifest(moto_endpoint, s3, bucket) -> None:
    s3.put_object(Bucket=bucket, Key="demo/a.txt", Body=b"same bytes")
    ctx, _ = make_ctx(moto_endpoint, bucket, "demo/a.txt")

    first = inspect_object(ctx)
    second = inspect_object(ctx)

    assert first == second
    assert first["manifest_key"] == "processed/demo/a.txt.manifest.json"
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="processed/")
    assert [o["Key"] for o in listed["Contents"]] == [first["manifest_key"]]


def test_inspect_reads_the_jobs_version(moto_endpoint, s3, bucket) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    old = s3.put_object(Bucket=bucket, Key=UPLOAD_KEY, Body=b"old version")
    s3.put_object(Bucket=bucket, Key=UPLOAD_KEY, Body=b"new version, longer")
    ctx, _ = make_ctx(moto_endpoint, bucket, UPLOAD_KEY, version_id=old["VersionId"])

    result = inspect_object(ctx)

    assert result["sha256"] == hashlib.sha256(b"old version").hexdigest()
    manifest = json.loads(read_object(s3, bucket, result["manifest_key"])[0])
    assert manifest["version_id"] == old["VersionId"]


@pytest.mark.parametrize("quoted", [True, False])
def test_matching_etag_is_accepted_quoted_or_not(moto_endpoint, s3, bucket, quoted) -> None:
    etag = s3.put_object(Bucket=bucket, Key=UPLOAD_KEY, Body=b"payload")["ETag"]
    etag = etag if quoted else etag.strip('"')
    ctx, _ = make_ctx(moto_endpoint, bucket, UPLOAD_KEY, etag=etag)
    assert inspect_object(ctx)["size"] == len(b"payload")


def test_replaced_object_is_a_permanent_error(moto_endpoint, s3, bucket) -> None:
    etag = s3.put_object(Bucket=bucket, Key=UPLOAD_KEY, Body=b"first upload")["ETag"]
    s3.put_object(Bucket=bucket, Key=UPLOAD_KEY, Body=b"second upload")
    ctx, _ = make_ctx(moto_endpoint, bucket, UPLOAD_KEY, etag=etag)

    with pytest.raises(PermanentJobError, match=r"replaced.*\[PreconditionFailed\]") as raised:
        inspect_object(ctx)
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="processed/")
    assert_names_no_bucket_or_key(raised.value, bucket, UPLOAD_KEY)


def assert_names_no_bucket_or_key(error: Exception, bucket: str, key: str) -> None:
    """A job's error is shown to its user (``GET /jobs``): a short message without the bucket
    or the key (the logs, keyed by job id, have them)."""
    text = str(error)
    assert bucket not in text and key not in text and "s3://" not in text, text


class IgnoresIfMatch:
    """An S3 endpoint that ignores IfMatch (some S3-compatible stores do)."""

    def __init__(self, s3):
        self.s3 = s3

    def get_object(self, **params):
        params.pop("IfMatch", None)
        return self.s3.get_object(**params)


def test_etag_is_checked_even_if_the_endpoint_ignores_if_match(moto_endpoint, s3, bucket):
    etag = s3.put_object(Bucket=bucket, Key="demo/k", Body=b"first")["ETag"]
    s3.put_object(Bucket=bucket, Key="demo/k", Body=b"second")
    with (
        pytest.raises(PermanentJobError, match="replaced"),
        open_object(IgnoresIfMatch(s3), JobRef(bucket, "demo/k", etag=etag)),
    ):
        pass


def test_missing_key_is_a_permanent_error(moto_endpoint, s3, bucket) -> None:
    ctx, _ = make_ctx(moto_endpoint, bucket, "uploads/user-1/up-1/gone.bin")
    with pytest.raises(PermanentJobError, match=r"does not exist \[NoSuchKey\]") as raised:
        inspect_object(ctx)
    assert_names_no_bucket_or_key(raised.value, bucket, "uploads/user-1/up-1/gone.bin")


def test_missing_bucket_is_a_permanent_error(moto_endpoint) -> None:
    ctx, _ = make_ctx(moto_endpoint, "no-such-bucket-4242", "demo/x")
    with pytest.raises(PermanentJobError, match=r"\[NoSuchBucket\]") as raised:
        inspect_object(ctx)
    assert_names_no_bucket_or_key(raised.value, "no-such-bucket-4242", "demo/x")


class FakeBody:
    def __init__(self, chunks: list[bytes]):
        self._chunks = chunks
        self.closed = False

    def iter_chunks(self, chunk_size: int):
        yield from self._chunks

    def close(self) -> None:
        self.closed = True


class FakeS3:
    def __init__(self, response: dict | None = None, error: dict | None = None):
        self.response, self.error = response, error

    def get_object(self, **params):
        if self.error:
            raise ClientError({"Error": self.error}, "GetObject")
        return self.response


def test_short_read_is_a_retryable_error() -> None:
    body = FakeBody([b"abc"])
    s3 = FakeS3({"Body": body, "ContentLength": 10, "ETag": '"x"'})
    with (
        pytest.raises(StreamSizeMismatch, match="read 3 bytes, ContentLength is 10"),
        open_object(s3, JobRef("b", "k")) as obj,
    ):
        list(obj.chunks())
    assert body.closed
    assert not issubclass(StreamSizeMismatch, PermanentJobError)


@pytest.mark.parametrize(
    ("code", "permanent"),
    [("AccessDenied", True), ("NoSuchVersion", True), ("SlowDown", False), ("500", False)],
)
def test_only_unfixable_s3_errors_are_permanent(code: str, permanent: bool) -> None:
    s3 = FakeS3(error={"Code": code, "Message": "x"})
    expected = PermanentJobError if permanent else ClientError
    with pytest.raises(expected) as caught, open_object(s3, JobRef("b", "k")):
        pass
    assert isinstance(caught.value, PermanentJobError) is permanent


def test_spool_writes_a_seekable_copy_and_refuses_oversized(moto_endpoint, s3, bucket) -> None:
    body = os.urandom(2 * DEFAULT_CHUNK_SIZE + 5)
    s3.put_object(Bucket=bucket, Key="demo/blob", Body=body)
    seen: list[tuple[int, int]] = []
    with spool(s3, JobRef(bucket, "demo/blob"), on_progress=lambda d, t: seen.append((d, t))) as (
        file,
        obj,
    ):
        assert file.read() == body
        assert obj.content_length == len(body)
    assert file.closed
    assert seen[-1] == (len(body), len(body)) and len(seen) == 3
    with (
        pytest.raises(PermanentJobError, match="over the 1000-byte limit"),
        spool(s3, JobRef(bucket, "demo/blob"), max_bytes=1000),
    ):
        pass


def test_inspect_does_not_import_pillow() -> None:
    code = (
        "import sys, fargate_worker.processors.builtin as b; "
        "b.detect_content_type(b'x', True); sys.exit('PIL' in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


# --- thumbnail -----------------------------------------------------------------------------


def assert_jpeg_thumbnail(s3, bucket: str, key: str, size: tuple[int, int]) -> None:
    raw, response = read_object(s3, bucket, key)
    assert response["ContentType"] == "image/jpeg"
    with Image.open(io.BytesIO(raw)) as image:
        assert image.format == "JPEG"
        assert image.mode == "RGB"
        assert image.size == size


def test_thumbnail_of_a_jpeg(moto_endpoint, s3, bucket) -> None:
    s3.put_object(Bucket=bucket, Key=UPLOAD_KEY, Body=image_bytes((2000, 1000), "JPEG"))
    ctx, progress = make_ctx(moto_endpoint, bucket, UPLOAD_KEY)

    result = thumbnail(ctx)

    assert result == {
        "thumbnail_key": "processed/user-1/up-1/thumbnail.jpg",
        "width": 256,
        "height": 128,
        "source_width": 2000,
        "source_height": 1000,
    }
    assert_jpeg_thumbnail(s3, bucket, result["thumbnail_key"], (256, 128))
    assert progress[-1] == 100


def test_thumbnail_of_a_transparent_png_with_a_demo_key(moto_endpoint, s3, bucket) -> None:
    s3.put_object(Bucket=bucket, Key="demo/tall.png", Body=image_bytes((1000, 2000), "PNG", "RGBA"))
    ctx, _ = make_ctx(moto_endpoint, bucket, "demo/tall.png")

    result = thumbnail(ctx)

    assert result["thumbnail_key"] == "processed/demo/tall.png.thumbnail.jpg"
    assert (result["width"], result["height"]) == (128, 256)
    assert (result["source_width"], result["source_height"]) == (1000, 2000)
    assert_jpeg_thumbnail(s3, bucket, result["thumbnail_key"], (128, 256))
    raw, _ = read_object(s3, bucket, result["thumbnail_key"])
    with Image.open(io.BytesIO(raw)) as image:
        assert min(image.getpixel((120, 250))) > 240  # transparent -> white, not black


def test_thumbnail_applies_exif_orientation(moto_endpoint, s3, bucket) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees: portrait
    body = image_bytes((2000, 1000), "JPEG", exif=exif.tobytes())
    s3.put_object(Bucket=bucket, Key=UPLOAD_KEY, Body=body)
    ctx, _ = make_ctx(moto_endpoint, bucket, UPLOAD_KEY)

    result = thumbnail(ctx)

    assert (result["width"], result["height"]) == (128, 256)
    assert (result["source_width"], result["source_height"]) == (1000, 2000)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"just some text, not pixels\n" * 100, "not a supported image: detected text/plain"),
        (image_bytes((400, 300), "JPEG")[:600], "cannot decode image"),  # truncated
        (png_header(100_000, 100_000), "image too large"),  # 10 Gpx claimed in ~100 bytes
    ],
    ids=["text", "truncated-jpeg", "png-bomb-header"],
)
def test_thumbnail_of_bad_input_is_a_permanent_error(
    moto_endpoint, s3, bucket, body: bytes, match: str
) -> None:
    s3.put_object(Bucket=bucket, Key=UPLOAD_KEY, Body=body)
    ctx, _ = make_ctx(moto_endpoint, bucket, UPLOAD_KEY)
    with pytest.raises(PermanentJobError, match=match):
        thumbnail(ctx)
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="processed/")


@pytest.mark.parametrize(
    ("fmt", "detected"),
    [("BMP", "image/bmp"), ("TIFF", "image/tiff"), ("ICO", "image/x-icon"), ("PPM", None)],
)
def test_thumbnail_opens_only_the_formats_it_supports(
    moto_endpoint, s3, bucket, fmt: str, detected: str | None
) -> None:
    """Pillow reads dozens of formats, each a decoder a hostile file can aim at: the type is
    detected from the bytes (whatever the upload announced) and only JPEG, PNG, GIF and WebP
    are opened, Pillow being told so too."""
    s3.put_object(
        Bucket=bucket, Key=UPLOAD_KEY, Body=image_bytes((64, 64), fmt), ContentType="image/png"
    )
    ctx, _ = make_ctx(moto_endpoint, bucket, UPLOAD_KEY)
    with pytest.raises(PermanentJobError, match="not a supported image") as raised:
        thumbnail(ctx)
    assert (detected or "application/octet-stream") in str(raised.value)


def test_thumbnail_errors_name_no_bucket(moto_endpoint, s3, bucket) -> None:
    """The error is shown to the user (``GET /jobs``): no bucket, no key beyond their own."""
    s3.put_object(Bucket=bucket, Key=UPLOAD_KEY, Body=png_header(100_000, 100_000))
    ctx, _ = make_ctx(moto_endpoint, bucket, UPLOAD_KEY)
    with pytest.raises(PermanentJobError) as raised:
        thumbnail(ctx)
    assert bucket not in str(raised.value) and "s3://" not in str(raised.value)


@pytest.mark.parametrize("limit", [3_000, 9_000])  # over 2x the limit: Pillow; under: ours
def test_thumbnail_pixel_limit(moto_endpoint, s3, bucket, monkeypatch, limit: int) -> None:
    monkeypatch.setattr(builtin, "MAX_SOURCE_PIXELS", limit)
    s3.put_object(Bucket=bucket, Key=UPLOAD_KEY, Body=image_bytes((100, 100), "PNG"))
    ctx, _ = make_ctx(moto_endpoint, bucket, UPLOAD_KEY)
    saved_limit = Image.MAX_IMAGE_PIXELS

    with pytest.raises(PermanentJobError, match="image too large"):
        thumbnail(ctx)
    assert saved_limit == Image.MAX_IMAGE_PIXELS  # process-wide setting restored

    monkeypatch.setattr(builtin, "MAX_SOURCE_PIXELS", 10_000)
    assert thumbnail(ctx)["source_width"] == 100


def test_thumbnail_refuses_a_source_too_big_to_spool(moto_endpoint, s3, bucket, monkeypatch):
    monkeypatch.setattr(builtin, "MAX_THUMBNAIL_SOURCE_BYTES", 1024)
    s3.put_object(Bucket=bucket, Key=UPLOAD_KEY, Body=image_bytes((400, 400), "PNG") + b"\0" * 2048)
    ctx, _ = make_ctx(moto_endpoint, bucket, UPLOAD_KEY)
    with pytest.raises(PermanentJobError, match="limit"):
        thumbnail(ctx)
