"""The built-in processors: ``inspect`` (checksum, size, type manifest) and ``thumbnail``.

Both read the job's object by streaming (never the whole object in memory), write their output
to one deterministic key per upload (a re-run overwrites it: jobs are idempotent), and turn
inputs that can never succeed into PermanentJobError so they do not burn retries.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fargate_worker.errors import PermanentJobError
from fargate_worker.processors import processor
from fargate_worker.processors.outputs import output_key
from fargate_worker.processors.s3stream import open_object, spool
from offload.content_type import detect_content_type
from offload.jobs import INSPECT, THUMBNAIL

if TYPE_CHECKING:
    from PIL.Image import Image

    from fargate_worker.context import JobContext

SNIFF_BYTES = 8192  # what filetype looks at; also enough to tell UTF-8 text from binary
THUMBNAIL_SIZE = 256  # longest side of a thumbnail, in pixels
THUMBNAIL_QUALITY = 85
# Decoding cost grows with pixels, not bytes: a small file can claim a huge canvas.
MAX_SOURCE_PIXELS = 100_000_000
# Thumbnails spool the source to local disk (Pillow needs to seek): bound what a job may use.
MAX_THUMBNAIL_SOURCE_BYTES = 1 << 30
# The formats a thumbnail is made of, by the type detected from their bytes (never the type the
# upload announced): Pillow opens only these, so a hostile file cannot reach its other decoders.
THUMBNAIL_FORMATS = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
}


@processor(INSPECT)
def inspect_object(ctx: JobContext) -> dict[str, Any]:
    """Stream the object once: sha256, size and detected type, written as a JSON manifest."""
    ref = ctx.ref
    digest = hashlib.sha256()
    head = b""
    size = 0
    with open_object(ctx.s3, ref) as obj:
        total = obj.content_length
        for chunk in obj.chunks():
            digest.update(chunk)
            if len(head) < SNIFF_BYTES:
                head += chunk[: SNIFF_BYTES - len(head)]
            size += len(chunk)
            # 100 is sent only once the manifest exists (and is never throttled away).
            ctx.report_progress(min(99, size * 100 // total) if total else 0)
    content_type = detect_content_type(head, complete=len(head) == size)
    manifest_key = output_key(ref.key, "manifest.json")
    manifest = {
        "source_bucket": ref.bucket,
        "source_key": ref.key,
        "version_id": obj.version_id,
        "etag": obj.etag,
        "size": size,
        "sha256": digest.hexdigest(),
        "content_type": content_type,
        "s3_content_type": obj.content_type,
        "job_id": ctx.job_id,
        "processed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    ctx.s3.put_object(
        Bucket=ref.bucket,
        Key=manifest_key,
        Body=json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"),
        ContentType="application/json",
    )
    ctx.report_progress(100)
    return {
        "manifest_key": manifest_key,
        "sha256": manifest["sha256"],
        "size": size,
        "content_type": content_type,
    }


@processor(THUMBNAIL)
def thumbnail(ctx: JobContext) -> dict[str, Any]:
    """A JPEG of at most THUMBNAIL_SIZE px a side, decoded at reduced scale where possible."""
    ref = ctx.ref

    def downloaded(done: int, total: int) -> None:
        ctx.report_progress(done * 80 // total if total else 0)

    limit = MAX_THUMBNAIL_SOURCE_BYTES
    with spool(ctx.s3, ref, max_bytes=limit, on_progress=downloaded) as (file, _):
        image, source_size = _decode_thumbnail(file)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    thumbnail_key = output_key(ref.key, "thumbnail.jpg")
    ctx.s3.put_object(
        Bucket=ref.bucket, Key=thumbnail_key, Body=out.getvalue(), ContentType="image/jpeg"
    )
    ctx.report_progress(100)
    return {
        "thumbnail_key": thumbnail_key,
        "width": image.width,
        "height": image.height,
        "source_width": source_size[0],
        "source_height": source_size[1],
    }


def _decode_thumbnail(file: Any) -> tuple[Image, tuple[int, int]]:
    """Open, bound, shrink and orient the image; returns the RGB thumbnail and the source's
    size as displayed (EXIF rotation applied). Pillow is imported here only, so a sandbox
    child that only inspects never loads it. Errors are shown to the user as they are: they
    name no bucket or key (the job's logs have those)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    detected = detect_content_type(file.read(SNIFF_BYTES), complete=False)
    file.seek(0)
    if detected not in THUMBNAIL_FORMATS:
        supported = ", ".join(sorted(THUMBNAIL_FORMATS))
        raise PermanentJobError(
            f"not a supported image: detected {detected} (supported: {supported})"
        )

    limit = MAX_SOURCE_PIXELS
    saved_limit = Image.MAX_IMAGE_PIXELS
    try:
        # Pillow raises DecompressionBombError from the header alone beyond 2 x its limit;
        # between 1x and 2x it only warns, so the explicit check below decides.
        Image.MAX_IMAGE_PIXELS = limit
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(file, formats=[THUMBNAIL_FORMATS[detected]])
        width, height = image.size
        if width * height > limit:
            raise PermanentJobError(f"image too large ({width}x{height} px, limit {limit} px)")
        if image.format == "JPEG":
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale: a 50 MP photo never hits RAM whole.
            image.draft("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        orientation = image.getexif().get(0x0112)  # EXIF Orientation
        if orientation in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
            width, height = height, width
        image = ImageOps.exif_transpose(image)
        image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        image = _to_rgb(image)
    except Image.DecompressionBombError as exc:
        raise PermanentJobError(f"image too large ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise PermanentJobError(f"not an image Pillow can read as {detected}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # Truncated or corrupt data: the bytes of this object version will never change.
        raise PermanentJobError(f"cannot decode image ({exc})") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = saved_limit  # a process-wide setting: leave it as found
    return image, (width, height)


def _to_rgb(image: Image) -> Image:
    """JPEG has no alpha: put transparent images on white instead of letting alpha drop to
    whatever colour the transparent pixels happen to hold (often black)."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
