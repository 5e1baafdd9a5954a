"""`inspect` over a 1 GB object through a real worker process: memory stays flat."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import replace
from pathlib import Path

import psutil

from tests.support.harness import add, producer, spawn_worker, wait_for, wait_for_state
from tests.support.s3data import MiB, upload_generated

GiB = 1024 * MiB
RSS_LIMIT_MB = 150


def _peak_rss_mb(pid: int) -> float:
    """VmHWM: the kernel's high-water mark of the process's resident set."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def test_inspect_of_1gb_object_keeps_worker_rss_under_150mb(
    settings, s3, bucket, moto_endpoint, tmp_path
):
    settings = replace(settings, s3_endpoint_url=moto_endpoint, concurrency=1)
    key = "uploads/rss-user/rss-upload/big.bin"
    expected_sha256 = upload_generated(s3, bucket, key, GiB)

    async def scenario():
        async with producer(settings) as prod:
            worker = spawn_worker(
                settings,
                tmp_path / "worker.log",
                **{
                    k: os.environ[k]
                    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
                },
            )
            try:
                job_id = await add(prod, "inspect", key, bucket=bucket)
                row = await wait_for_state(settings, job_id, "completed", timeout_s=240)
                await wait_for(lambda: psutil.Process(worker.pid).children())
                tree = [psutil.Process(worker.pid), *psutil.Process(worker.pid).children()]
                peaks = {
                    p.pid: _peak_rss_mb(p.pid)
                    for p in tree
                    if "resource_tracker" not in " ".join(p.cmdline())
                }
            finally:
                worker.terminate()
                await asyncio.to_thread(worker.wait, 30)
            return row, peaks

    row, peaks = asyncio.run(scenario())
    assert row["result"]["sha256"] == expected_sha256
    assert row["result"]["size"] == GiB
    manifest = json.loads(
        s3.get_object(Bucket=bucket, Key=row["result"]["manifest_key"])["Body"].read()
    )
    assert manifest["sha256"] == expected_sha256
    assert len(peaks) >= 2  # the worker and its sandbox child
    print("peak RSS MB by pid:", {pid: round(mb, 1) for pid, mb in peaks.items()})
    for pid, peak in peaks.items():
        assert peak < RSS_LIMIT_MB, (pid, peaks)
