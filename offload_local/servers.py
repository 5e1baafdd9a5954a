"""The servers the local stack runs on: a moto server, and Redis and PostgreSQL (the configured
ones when they answer, else throwaway servers started from the installed binaries)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def moto_server(log_path: Path | None = None, port: int | None = None) -> Iterator[str]:
    """A moto server (real HTTP) in a child process; yields its endpoint URL."""
    port = port or free_port()
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        process_group=0,  # Ctrl-C reaches the stack, which stops this in order
        # moto's global CORS stays on: Cognito in AWS answers browsers' preflights, and so must
        # moto's. S3 answers with the bucket's CORS rules where it has them (ETag exposed).
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{endpoint}/moto-api/")
        yield endpoint
    finally:
        stop_process(proc)
        if log_path:
            log.close()  # type: ignore[union-attr]


def redis_answers(url: str) -> bool:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2).ping()
    except (redis.RedisError, OSError):
        return False
    return True


def postgres_answers(url: str) -> bool:
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error:
        return False
    return True


def _wait_started(
    proc: subprocess.Popen, answers: Callable[[str], bool], url: str, timeout_s: float, what: str
) -> None:
    """Until the server just started answers at ``url``; it exiting or a timeout is an error."""
    deadline = time.monotonic() + timeout_s
    while not answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"did not start: {what}")
        time.sleep(0.1)


@contextmanager
def redis_server(url: str | None, workdir: Path) -> Iterator[str]:
    """``url`` when a Redis answers there, else a throwaway ``redis-server`` on a free port
    that keeps nothing on disk."""
    if url and redis_answers(url):
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            f"no Redis at {url} and no redis-server binary: run scripts/setup.sh first"
        )
    port = free_port()
    log = open(workdir / "redis.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=log,
        stderr=subprocess.STDOUT,
        process_group=0,  # Ctrl-C reaches the stack, which stops this in order
        cwd=workdir,
    )
    started = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_started(proc, redis_answers, started, 15, f"redis-server; see {workdir}/redis.log")
        yield started
    finally:
        stop_process(proc)
        log.close()


def _pg_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if found:
        return Path(found[-1]).parent
    if initdb := shutil.which("initdb"):
        return Path(initdb).parent
    raise RuntimeError("no PostgreSQL binaries (initdb): run scripts/setup.sh first")


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parents[1].name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _as_postgres_user(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; a root caller runs it as the postgres user."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


@contextmanager
def postgres_server(url: str | None, workdir: Path) -> Iterator[str]:
    """``url`` when a PostgreSQL answers there, else a throwaway trust-auth cluster on a free
    port in a temporary directory (removed afterwards)."""
    if url and postgres_answers(url):
        yield url
        return
    bindir = _pg_bindir()
    # Under /tmp, not workdir: the postgres user must be able to reach it.
    datadir = Path(tempfile.mkdtemp(prefix="offload-pg-"))
    if os.geteuid() == 0:
        shutil.chown(datadir, "postgres", "postgres")
    log_path = workdir / "postgresql.log"
    subprocess.run(
        _as_postgres_user(
            [
                *(str(bindir / "initdb"), "-D", str(datadir / "data"), "-U", "postgres"),
                *("--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8"),
            ]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/",
    )
    port = free_port()
    log = open(log_path, "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        _as_postgres_user(
            [
                *(str(bindir / "postgres"), "-D", str(datadir / "data"), "-p", str(port)),
                *("-k", str(datadir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"),
            ]
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        process_group=0,  # Ctrl-C reaches the stack, which stops this in order
        cwd="/",
    )
    started = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        _wait_started(proc, postgres_answers, started, 30, f"PostgreSQL; see {log_path}")
        yield started
    finally:
        stop_process(proc, timeout_s=20)  # SIGTERM is PostgreSQL's "smart" shutdown
        log.close()
        shutil.rmtree(datadir, ignore_errors=True)
