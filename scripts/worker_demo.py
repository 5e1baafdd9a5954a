"""Local worker demo: real Redis, real PostgreSQL, S3 from a moto server, the real worker.

Uploads a few sample files the way browsers do (keys ``uploads/<user>/<upload id>/<name>``),
enqueues ``inspect`` for each and ``thumbnail`` for the images exactly as the enqueue Lambda
does, runs ``OffloadWorker`` (sandboxed child processes) until every job is completed or
failed, checks the outputs against the bytes it uploaded, and prints a table and a manifest.

Run it with ``scripts/demo.sh`` (which runs setup first) or ``python -m scripts.worker_demo``
from the repository root. Uses REDIS_URL and DATABASE_URL like everything else; its Redis keys
(a prefix of its own) and its PostgreSQL schema are removed at the end unless ``--keep``.
Exits 0 when every job completed and every output matched.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import logging
import os
import random
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import boto3
import psycopg
import redis
from psycopg import sql
from psycopg.rows import dict_row

from fargate_worker.worker import OffloadWorker
from offload.db.migrate import migrate
from offload.jobs import INSPECT, THUMBNAIL, JobRef
from offload.keys import UploadKey
from offload.logs import configure_logging
from offload.queue import producer
from offload.settings import Settings
from tests.support import servers

OWNER = "demo-user"
BUCKET = "offload-demo"
FINAL_STATES = ("completed", "failed")
MiB = 1 << 20


@dataclass
class Sample:
    """One uploaded file and what the demo knows about its bytes (to check the outputs)."""

    name: str
    content_type: str
    key: str = ""
    size: int = 0
    sha256: str = ""
    image_size: tuple[int, int] | None = None
    jobs: dict[str, str] = field(default_factory=dict)  # job name -> job id


class GeneratedStream(io.RawIOBase):
    """``size`` pseudo-random bytes produced on demand: the big sample is streamed to S3
    (multipart) without ever being in memory whole; its sha256 is computed on the way."""

    def __init__(self, size: int, seed: int = 42):
        self._left = size
        self._random = random.Random(seed)
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self._left)
        if count:
            data = self._random.randbytes(count)
            buffer[:count] = data
            self.digest.update(data)
            self._left -= count
        return count


def _text_sample() -> bytes:
    lines = [
        "Offload demo: a small text upload.",
        "The worker streams it from S3, hashes it and writes a manifest next to it.",
        "Unicode survives too: naïve café, 東京, ✓.",
    ]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _png_sample() -> tuple[bytes, tuple[int, int]]:
    """A diagram-like RGBA PNG with a transparent background (thumbnails put it on white)."""
    from PIL import Image, ImageDraw

    size = (900, 600)
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    for i, colour in enumerate(((220, 60, 60), (60, 160, 90), (50, 90, 210))):
        left = 80 + i * 270
        draw.rounded_rectangle((left, 180, left + 200, 420), 24, fill=(*colour, 255))
    draw.line((180, 300, 720, 300), fill=(30, 30, 30, 255), width=8)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue(), size


def _jpeg_sample() -> tuple[bytes, tuple[int, int]]:
    """A 'photo': a 2400x1600 gradient with shapes, saved as JPEG."""
    from PIL import Image, ImageDraw

    size = (2400, 1600)
    gradient = Image.linear_gradient("L").resize(size)
    image = Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.ROTATE_180), gradient))
    draw = ImageDraw.Draw(image)
    draw.ellipse((900, 400, 1500, 1000), fill=(250, 200, 40))
    draw.rectangle((200, 1200, 2200, 1400), fill=(20, 60, 120))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue(), size


def upload_samples(s3: Any, big_mb: int) -> list[Sample]:
    """Create the bucket and put the samples, each under a fresh upload id."""
    s3.create_bucket(Bucket=BUCKET)
    png, png_size = _png_sample()
    jpeg, jpeg_size = _jpeg_sample()
    small: list[tuple[Sample, bytes]] = [
        (Sample("notes.txt", "text/plain"), _text_sample()),
        (Sample("diagram.png", "image/png", image_size=png_size), png),
        (Sample("holiday photo.jpg", "image/jpeg", image_size=jpeg_size), jpeg),
    ]
    samples = []
    for sample, body in small:
        sample.key = _new_key(sample.name)
        sample.size, sample.sha256 = len(body), hashlib.sha256(body).hexdigest()
        s3.put_object(Bucket=BUCKET, Key=sample.key, Body=body, ContentType=sample.content_type)
        samples.append(sample)

    big = Sample("telemetry.bin", "application/octet-stream")
    big.key = _new_key(big.name)
    big.size = big_mb * MiB
    stream = GeneratedStream(big.size)
    s3.upload_fileobj(stream, BUCKET, big.key, ExtraArgs={"ContentType": big.content_type})
    big.sha256 = stream.digest.hexdigest()
    samples.append(big)
    return samples


def _new_key(name: str) -> str:
    return str(UploadKey.build(OWNER, uuid.uuid4().hex[:12], name))


def job_refs(s3: Any, samples: list[Sample]) -> list[tuple[str, JobRef, Sample]]:
    """What the enqueue Lambda would build from the S3 events: references, never bytes."""
    jobs = []
    for sample in samples:
        head = s3.head_object(Bucket=BUCKET, Key=sample.key)
        upload = UploadKey.parse(sample.key)
        ref = JobRef(
            bucket=BUCKET,
            key=sample.key,
            version_id=head.get("VersionId"),
            etag=head["ETag"],
            owner=upload.owner,
            upload_id=upload.upload_id,
        )
        jobs.append((INSPECT, ref, sample))
        if sample.image_size is not None:
            jobs.append((THUMBNAIL, ref, sample))
    return jobs


async def run_jobs(
    settings: Settings,
    jobs: list[tuple[str, JobRef, Sample]],
    timeout_s: float,
    say: Callable[[str], None],
    metrics_stream: TextIO | None,
) -> list[dict[str, Any]]:
    """Enqueue every job, run the worker until all are completed/failed; returns their rows.
    The worker's EMF metric lines go to ``metrics_stream`` (None: stdout, as in production)."""
    async with producer(settings) as jobs_producer:
        for name, ref, sample in jobs:
            sample.jobs[name] = await jobs_producer.enqueue(name, ref)
    ids = [sample.jobs[name] for name, _, sample in jobs]
    say(f"enqueued {len(ids)} jobs; starting the worker (concurrency {settings.concurrency})")

    worker = OffloadWorker(settings)
    worker.metrics.stream = metrics_stream
    started = time.monotonic()
    await worker.start()
    try:
        rows = await _wait_until_final(settings, ids, started + timeout_s, started, say)
    finally:
        await worker.shutdown(grace_s=10)
    return rows


async def _wait_until_final(
    settings: Settings,
    ids: list[str],
    deadline: float,
    started: float,
    say: Callable[[str], None],
) -> list[dict[str, Any]]:
    last_report = ""
    async with await psycopg.AsyncConnection.connect(
        settings.database_url,
        options=f"-c search_path={settings.database_schema}",
        autocommit=True,
        row_factory=dict_row,
    ) as conn:
        while True:
            cursor = await conn.execute("SELECT * FROM jobs WHERE id = ANY(%s)", (ids,))
            rows = await cursor.fetchall()
            counts: dict[str, int] = {}
            for row in rows:
                counts[row["state"]] = counts.get(row["state"], 0) + 1
            report = ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))
            if report != last_report:
                say(f"  {time.monotonic() - started:5.1f} s  {report}")
                last_report = report
            if len(rows) == len(ids) and all(row["state"] in FINAL_STATES for row in rows):
                return rows
            if time.monotonic() > deadline:
                say("timed out waiting for the jobs")
                return rows
            await asyncio.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# Report


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def check_output(s3: Any, row: dict[str, Any], sample: Sample) -> tuple[str, list[str]]:
    """A one-line summary of the job's result, and what did not match the uploaded bytes."""
    result = row["result"] or {}
    problems: list[str] = []
    if row["state"] != "completed":
        return (row["error_message"] or row["state"])[:70], ["not completed"]
    if row["name"] == INSPECT:
        if result.get("sha256") != sample.sha256:
            problems.append("sha256 differs from the uploaded bytes")
        if result.get("size") != sample.size:
            problems.append(f"size {result.get('size')} != {sample.size}")
        manifest = json.loads(
            s3.get_object(Bucket=BUCKET, Key=result["manifest_key"])["Body"].read()
        )
        if manifest.get("sha256") != sample.sha256:
            problems.append("manifest sha256 differs")
        summary = (
            f"sha256 {str(result.get('sha256'))[:12]}…  {human_size(int(result.get('size', 0)))}"
            f"  {result.get('content_type')}"
        )
        return summary, problems
    if row["name"] == THUMBNAIL:
        from PIL import Image

        body = s3.get_object(Bucket=BUCKET, Key=result["thumbnail_key"])["Body"].read()
        with Image.open(io.BytesIO(body)) as thumb:
            actual = (thumb.format, thumb.size)
        expected = ("JPEG", (result.get("width"), result.get("height")))
        if actual != expected:
            problems.append(f"thumbnail is {actual}, result says {expected}")
        if sample.image_size != (result.get("source_width"), result.get("source_height")):
            problems.append("source size differs")
        if max(actual[1]) > 256:
            problems.append("thumbnail larger than 256 px")
        summary = (
            f"thumbnail {result.get('width')}x{result.get('height')} JPEG {human_size(len(body))}"
            f" (from {result.get('source_width')}x{result.get('source_height')})"
        )
        return summary, problems
    return json.dumps(result)[:70], problems


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*headers).rstrip())
    print(line.format(*("-" * w for w in widths)).rstrip())
    for row in rows:
        print(line.format(*row).rstrip())


def report(
    s3: Any, rows: list[dict[str, Any]], jobs: list[tuple[str, JobRef, Sample]]
) -> tuple[bool, dict[str, Any] | None]:
    by_id = {row["id"]: row for row in rows}
    table: list[list[str]] = []
    all_good = True
    for name, _, sample in jobs:
        row = by_id.get(sample.jobs[name])
        if row is None:
            table.append([name, sample.key, "missing", "-", "-", "no status row", "✗"])
            all_good = False
            continue
        summary, problems = check_output(s3, row, sample)
        all_good = all_good and not problems
        took = "-"
        if row["started_at"] and row["finished_at"]:
            took = f"{(row['finished_at'] - row['started_at']).total_seconds():.2f} s"
        table.append(
            [
                name,
                sample.key,
                row["state"],
                f"{row['attempt']}/{row['max_attempts']}",
                took,
                summary,
                "✓" if not problems else "✗ " + "; ".join(problems),
            ]
        )
    print()
    print_table(["JOB", "KEY", "STATE", "ATTEMPTS", "TOOK", "RESULT", "CHECK"], table)
    inspected = [by_id.get(sample.jobs[INSPECT]) for _, _, sample in jobs if INSPECT in sample.jobs]
    manifests = [row for row in inspected if row and row["state"] == "completed"]
    return all_good, (manifests[-1] if manifests else None)


def show_manifest(s3: Any, row: dict[str, Any], lines: int = 14) -> None:
    key = row["result"]["manifest_key"]
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode("utf-8")
    print(f"\nmanifest read back from s3://{BUCKET}/{key}:")
    for text in body.splitlines()[:lines]:
        print(f"  {text}")
    if len(body.splitlines()) > lines:
        print("  …")


# ---------------------------------------------------------------------------------------------
# Clean-up


def delete_redis_keys(url: str, prefix: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        return len(keys)
    finally:
        client.close()


def drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big-mb", type=int, default=30, help="size of the binary sample (MiB)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for jobs")
    parser.add_argument("--concurrency", type=int, default=2, help="worker concurrency")
    parser.add_argument("--keep", action="store_true", help="keep the schema and Redis keys")
    parser.add_argument(
        "--verbose", action="store_true", help="show the worker's JSON logs and EMF metrics"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("INFO" if args.verbose else "WARNING")
    logging.getLogger("botocore").setLevel(logging.WARNING)

    def say(message: str) -> None:
        print(message, flush=True)

    redis_url, database_url = servers.redis_url(), servers.database_url()
    run_id = uuid.uuid4().hex[:8]
    prefix = "{demo_" + run_id + "}"
    schema = f"demo_{run_id}"
    began = time.monotonic()

    with servers.moto_server() as endpoint:
        # Before the worker starts: its sandbox children inherit the environment.
        os.environ.update(servers.aws_test_env(endpoint))
        say(f"moto S3 at {endpoint}; Redis prefix {prefix}; PostgreSQL schema {schema}")
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        samples = upload_samples(s3, args.big_mb)
        for sample in samples:
            say(f"  uploaded {sample.key} ({human_size(sample.size)})")

        settings = Settings(
            redis_url=redis_url,
            database_url=database_url,
            database_schema=schema,
            queue_prefix=prefix,
            concurrency=args.concurrency,
            drain_delay_s=1,
            default_attempts=3,
            default_backoff_ms=500,
            s3_endpoint_url=endpoint,
            processor_modules=("fargate_worker.processors.builtin",),
            health_file=f"/tmp/offload-demo-{run_id}.health",
            health_interval_s=2,
        )
        ok = False
        try:
            applied = migrate(database_url, schema)
            say(f"migrated schema {schema} (versions {', '.join(map(str, applied))})")
            jobs = job_refs(s3, samples)
            metrics = None if args.verbose else io.StringIO()
            rows = asyncio.run(run_jobs(settings, jobs, args.timeout, say, metrics))
            all_good, manifest_row = report(s3, rows, jobs)
            if manifest_row is not None:
                show_manifest(s3, manifest_row)
            completed = sum(row["state"] == "completed" for row in rows)
            ok = all_good and completed == len(jobs)
            say(
                f"\n{completed}/{len(jobs)} jobs completed; "
                + ("every output matches its upload" if all_good else "problems: see CHECK")
                + f" ({time.monotonic() - began:.1f} s in all)"
            )
        finally:
            if args.keep:
                say(f"kept Redis keys {prefix}:* and schema {schema} (--keep)")
            else:
                deleted = delete_redis_keys(redis_url, prefix)
                drop_schema(database_url, schema)
                say(f"cleaned up: {deleted} Redis keys, schema {schema}")
            Path(settings.health_file).unlink(missing_ok=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
