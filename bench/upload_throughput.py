"""Benchmark: is the CLI's multipart upload engine as fast as boto3's ``upload_file``?

Run from the repository root::

    python bench/upload_throughput.py [--size-mb 1024] [--runs 6] [--parallel 4]

It starts a moto S3 server, creates a bucket and writes a file of ``--size-mb`` MiB (random
bytes) to a temporary directory, then, in the same run, uploads that file to the same endpoint:

(a) **boto3**: ``S3Client.upload_file`` with the default ``TransferConfig`` (its settings are
    printed): the TransferManager, threads, its own part size;
(b) **offload**: the CLI's engine (``offload_cli/transfer.py``: ``put_parts``, the code
    ``offload upload`` runs), ``--parallel`` threads, the part size an API with
    default settings hands out for this size (``plan_parts(size, Settings().part_size_bytes)``:
    ``OFFLOAD_PART_SIZE_MIB``'s default, 16 MiB, or more for files too large for 10,000 parts of
    that size), each part PUT to a presigned URL.

Transfer against transfer: in (b) the presigned part URLs and the create/complete calls come
from boto3 directly (a small adapter in place of the API), so no API Lambda, PostgreSQL or
Cognito is in the loop. Both timings cover create, every part and complete. ``--runs`` repeats
the pair, alternating which goes first; each object is deleted after its run.

Server work is made equal: boto3 sends part checksums only where S3 requires them, so both
multipart uploads are created without a checksum algorithm, as the API creates them. (With
boto3's default CRC32 part checksums, moto completes a "composite" object and skips the
whole-object checksum and copy it does otherwise: seconds per GiB in moto, none in S3.)

The part sizes differ by default: boto3 uses 8 MiB, the API 16 MiB (both are printed). moto's
cost is per request as much as per byte, so smaller parts are slower against moto whatever the
client. ``--part-mb 8`` (our engine at boto3's part size) or ``--boto3-chunk-mb 16`` (boto3 at
the API's) compare the engines at equal part sizes.
"client CPU" is this process's CPU time during the upload (moto's own is not counted).
Target: ratio offload/boto3 >= 1.0. Figures are printed, not asserted. The last line,
``RESULT ...``, is machine-parsable.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the project is not installed

from offload_cli.transfer import DEFAULT_PARALLEL  # noqa: E402 (after the sys.path line)

MIB = 1 << 20
BUCKET = "bench-upload-throughput"


def write_file(path: Path, size: int) -> None:
    """Random bytes (a 16 MiB random block repeated: nothing between here and moto compresses)."""
    block = os.urandom(16 * MIB)
    with open(path, "wb") as out:
        left = size
        while left:
            n = min(left, len(block))
            out.write(block[:n])
            left -= n


class Boto3PartUrls:
    """What the API does for the CLI, done with boto3: presigned ``upload_part`` URLs."""

    def __init__(
        self,
        s3: Any,
        key: str,
        upload_id: str,
        plan: Any,
        expires_s: int = 900,
        batch: int = 100,
    ):
        self.s3, self.key, self.upload_id, self.plan = s3, key, upload_id, plan
        self.expires_s, self.batch = expires_s, batch

    def part_urls(self, numbers: list[int]) -> tuple[dict[int, str], float]:
        from offload.uploads import presign_parts  # what the API hands out

        parts = presign_parts(
            self.s3, BUCKET, self.key, self.upload_id, self.plan, numbers, self.expires_s
        )
        return {part["partNumber"]: part["url"] for part in parts}, time.time() + self.expires_s


def run_boto3(s3: Any, path: Path, key: str, config: Any) -> float:
    started = time.perf_counter()
    s3.upload_file(str(path), BUCKET, key, Config=config)
    return time.perf_counter() - started


def run_offload(s3: Any, path: Path, key: str, parallel: int, part_size: int) -> float:
    from offload.uploads import PartPlan
    from offload_cli import transfer
    from offload_cli.api import new_pool

    size = path.stat().st_size
    pool = new_pool(maxsize=parallel + 4)  # as the CLI makes it
    started = time.perf_counter()
    upload_id = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    numbers = list(range(1, transfer.part_count(size, part_size) + 1))
    plan = PartPlan(size=size, part_size=part_size, part_count=len(numbers))
    urls = transfer.PartUrls(Boto3PartUrls(s3, key, upload_id, plan), numbers)
    fd = os.open(path, os.O_RDONLY)
    try:
        etags = transfer.put_parts(
            pool=pool,
            fd=fd,
            size=size,
            part_size=part_size,
            numbers=numbers,
            urls=urls,
            parallel=parallel,
        )
    finally:
        os.close(fd)
    s3.complete_multipart_upload(
        Bucket=BUCKET,
        Key=key,
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in numbers]},
    )
    seconds = time.perf_counter() - started
    pool.clear()
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="file size in MiB")
    parser.add_argument(
        "--runs", type=int, default=6, help="pairs of uploads (order alternates; default 6)"
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=DEFAULT_PARALLEL,
        help=f"the CLI's --parallel (default {DEFAULT_PARALLEL})",
    )
    parser.add_argument(
        "--part-mb",
        type=int,
        default=0,
        help="our part size (default: what an API with default settings hands out)",
    )
    parser.add_argument(
        "--boto3-chunk-mb",
        type=int,
        default=0,
        help="boto3's multipart_chunksize (default: TransferConfig's own); for diagnosis",
    )
    args = parser.parse_args(argv)

    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config as BotoConfig

    from offload.settings import Settings
    from offload.uploads import plan_parts
    from offload_local.servers import moto_server

    size = args.size_mb * MIB
    # What a deployment with default settings hands out for this size (not this machine's
    # environment: the figure is about the default).
    api_part_size = plan_parts(size, Settings().part_size_bytes).part_size
    part_size = args.part_mb * MIB if args.part_mb else api_part_size
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(name, value)
    config = TransferConfig()
    if args.boto3_chunk_mb:
        config = TransferConfig(multipart_chunksize=args.boto3_chunk_mb * MIB)
    print(
        f"boto3 {boto3.__version__} upload_file, "
        f"{'CHANGED' if args.boto3_chunk_mb else 'default'} TransferConfig: "
        f"multipart_threshold={config.multipart_threshold // MIB} MiB, "
        f"multipart_chunksize={config.multipart_chunksize // MIB} MiB, "
        f"max_concurrency={config.max_concurrency}, use_threads={config.use_threads}"
    )
    print(
        f"offload engine (put_parts): parallel={args.parallel}, part size {part_size // MIB} MiB"
        f" ({'CHANGED; ' if args.part_mb else ''}the API's default for this size:"
        f" {api_part_size // MIB} MiB), presigned part URLs from boto3 (no API in the loop)"
    )
    print(
        f"part sizes: boto3 {config.multipart_chunksize / MIB:g} MiB"
        f" ({-(-size // config.multipart_chunksize)} parts),"
        f" offload {part_size / MIB:g} MiB ({-(-size // part_size)} parts)"
    )
    rates: dict[str, list[float]] = {"boto3": [], "offload": []}
    with tempfile.TemporaryDirectory(prefix="offload-bench-") as tmp, moto_server() as endpoint:
        path = Path(tmp) / "upload.bin"
        started = time.perf_counter()
        write_file(path, size)
        print(f"wrote {args.size_mb} MiB in {time.perf_counter() - started:.1f} s; moto {endpoint}")
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            # Checksums only where S3 requires them, as the API's uploads have none: with
            # boto3's default (CRC32 on every part) moto completes a "composite" object and
            # skips the whole-object checksum and copy it does for uploads without one, which
            # cost seconds per GiB in moto (not in S3) and are no part of either client's work.
            config=BotoConfig(request_checksum_calculation="when_required"),
        )
        s3.create_bucket(Bucket=BUCKET)
        for run in range(args.runs):
            order = ["boto3", "offload"] if run % 2 == 0 else ["offload", "boto3"]
            for mode in order:
                key = f"uploads/bench/{mode}-{run}.bin"
                cpu = time.process_time()
                if mode == "boto3":
                    seconds = run_boto3(s3, path, key, config)
                else:
                    seconds = run_offload(s3, path, key, args.parallel, part_size)
                cpu = time.process_time() - cpu
                stored = s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
                if stored != size:
                    raise RuntimeError(f"{mode}: S3 holds {stored} bytes, not {size}")
                s3.delete_object(Bucket=BUCKET, Key=key)  # free the moto server's memory
                rate = args.size_mb / seconds
                rates[mode].append(rate)
                print(
                    f"run {run + 1} {mode:>7}: {seconds:6.2f} s  {rate:7.1f} MiB/s  "
                    f"client CPU {cpu:5.2f} s",
                    flush=True,
                )

    boto3_rate = statistics.median(rates["boto3"])
    ours = statistics.median(rates["offload"])
    print()
    print(f"{'':>8} {'median MiB/s':>12} {'runs':>30}")
    for mode in ("boto3", "offload"):
        runs = ", ".join(f"{r:.1f}" for r in rates[mode])
        print(f"{mode:>8} {statistics.median(rates[mode]):>12.1f} {runs:>30}")
    print(f"ratio offload/boto3 = {ours / boto3_rate:.2f} (target >= 1.0)")
    print(
        f"RESULT size_mb={args.size_mb} runs={args.runs} boto3_mbps={boto3_rate:.1f} "
        f"offload_mbps={ours:.1f} ratio={ours / boto3_rate:.3f} parallel={args.parallel} "
        f"part_mb={part_size / MIB:g} boto3_part_mb={config.multipart_chunksize / MIB:g}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
