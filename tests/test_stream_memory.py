"""`inspect` over a 1 GB object through a real worker process: memory stays flat in every
process of the worker's tree, above all in the sandbox child that reads the object (a
grandchild of the worker: the forkserver forks it)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

from tests.support.harness import add, producer, spawn_worker, wait_for_state
from tests.support.s3data import MiB, upload_generated

GiB = 1024 * MiB
RSS_LIMIT_MB = 150


def _peak_rss_mb(pid: int) -> float:
    """VmHWM: the kernel's high-water mark of the process's resident set."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


@dataclass
class Seen:
    """One process of the tree, as the samples saw it."""

    cmdline: str
    ancestors: list[int]
    peak_rss_mb: float = 0.0
    reading_s3_at: list[float] = field(default_factory=list)  # when it had S3 connections


class TreeSampler:
    """Samples the whole process tree under ``root_pid`` (children of children too) from a
    thread, every ``interval_s`` until stopped, so that processes started and gone between
    two looks of the test still count: each one's peak RSS (VmHWM only grows, so the last
    sample is its peak so far) and when it had a TCP connection to S3 at ``s3_port``."""

    def __init__(self, root_pid: int, s3_port: int, interval_s: float = 0.2):
        self.root_pid = root_pid
        self.s3_port = s3_port
        self.interval_s = interval_s
        self.seen: dict[int, Seen] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self._sample()  # a last look, now that the job is over

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def _sample(self) -> None:
        try:
            root = psutil.Process(self.root_pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for proc in tree:
            try:
                with proc.oneshot():
                    seen = self.seen.get(proc.pid) or Seen(
                        " ".join(proc.cmdline()), [parent.pid for parent in proc.parents()]
                    )
                    seen.peak_rss_mb = max(seen.peak_rss_mb, _peak_rss_mb(proc.pid))
                    if any(
                        conn.raddr and conn.raddr.port == self.s3_port
                        for conn in proc.net_connections(kind="tcp")
                    ):
                        seen.reading_s3_at.append(time.time())
            except (psutil.NoSuchProcess, psutil.ZombieProcess, FileNotFoundError):
                continue  # gone between the listing and the look: its last sample stands
            self.seen[proc.pid] = seen


@pytest.mark.slow
def test_inspect_of_1gb_object_keeps_every_worker_process_under_150mb(
    settings, s3, bucket, moto_endpoint, tmp_path
):
    settings = replace(settings, s3_endpoint_url=moto_endpoint, concurrency=1)
    key = "uploads/rss-user/rss-upload/big.bin"
    expected_sha256 = upload_generated(s3, bucket, key, GiB)
    s3_port = urlsplit(moto_endpoint).port
    assert s3_port is not None

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
                with TreeSampler(worker.pid, s3_port) as sampler:
                    job_id = await add(prod, "inspect", key, bucket=bucket)
                    row = await wait_for_state(settings, job_id, "completed", timeout_s=240)
            finally:
                worker.terminate()
                await asyncio.to_thread(worker.wait, 30)
            return row, worker.pid, sampler.seen

    row, worker_pid, seen = asyncio.run(scenario())
    assert row["result"]["sha256"] == expected_sha256
    assert row["result"]["size"] == GiB
    manifest = json.loads(
        s3.get_object(Bucket=bucket, Key=row["result"]["manifest_key"])["Body"].read()
    )
    assert manifest["sha256"] == expected_sha256
    report = {pid: (round(p.peak_rss_mb, 1), p.cmdline[:60]) for pid, p in seen.items()}
    print("peak RSS MB by pid:", report)

    # The process that streamed the object: the one talking to S3 while the job ran. It must
    # have been sampled then, and it is the sandbox child, not the worker or its forkserver.
    ran_from, ran_to = row["started_at"].timestamp(), row["finished_at"].timestamp()
    streaming = [
        pid for pid, p in seen.items() if any(ran_from <= at <= ran_to for at in p.reading_s3_at)
    ]
    assert len(streaming) == 1, report
    reader = seen[streaming[0]]
    assert worker_pid in reader.ancestors[1:], (streaming, reader)  # a grandchild at least
    assert reader.peak_rss_mb < RSS_LIMIT_MB, report

    assert worker_pid in seen and len(seen) >= 3  # the worker, its forkserver, the child
    for pid, p in seen.items():
        assert p.peak_rss_mb < RSS_LIMIT_MB, (pid, report)
