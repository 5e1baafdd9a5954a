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
MOTO_MODULE = "offload_local.moto_process"  # what the moto server's command line runs


def free_port() -> int:
    """A port that was free a moment ago. Nothing reserves it: whoever binds it later may find
    it taken (see ``_start_on_free_port``). Tests also use it as a port nobody listens on."""
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


def _listening_socket(host: str = "127.0.0.1") -> socket.socket:
    """A socket listening on a port the kernel picked: no other process can take that port
    from now on (unlike ``free_port``'s, which is free again once it returns)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


@contextmanager
def moto_server(log_path: Path | None = None) -> Iterator[str]:
    """A moto server (real HTTP) in a child process; yields its endpoint URL.

    Race-free port: this process binds the listening socket (port 0, the kernel's pick) and
    the child serves on it (``offload_local.moto_process``), so nothing can take the port
    between the choice and the bind, and the endpoint cannot be someone else's moto."""
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    with _listening_socket() as sock:
        port = sock.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", MOTO_MODULE, str(sock.fileno())],
            pass_fds=(sock.fileno(),),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[1],  # offload_local importable
            process_group=0,  # Ctrl-C reaches the stack, which stops this in order
            # moto's global CORS stays on: Cognito in AWS answers browsers' preflights, and so
            # must moto's. S3 answers with the bucket's CORS rules where it has them (ETag
            # exposed).
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


START_ATTEMPTS = 5


def _start_on_free_port(
    launch: Callable[[int], subprocess.Popen],
    is_ours: Callable[[int, subprocess.Popen], bool],
    timeout_s: float,
    what: str,
) -> tuple[subprocess.Popen, int]:
    """Start a server that only takes a port number, race-free: ``(process, port)`` once the
    server answering on the port is the one just started.

    redis-server and postgres cannot serve on a socket bound for them (and redis-server's
    port 0 means "no TCP at all"), so the port is picked free first and bound by the server
    later. In between, anything else picking ports (parallel tests) can take it: the server
    then exits (address in use) and another port is tried; and whoever took the port may
    answer in its place, so "it answers" is not enough: ``is_ours`` asks the server who it is.
    """
    for _ in range(START_ATTEMPTS):
        port = free_port()
        proc = launch(port)
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None:
            if is_ours(port, proc):
                return proc, port
            if time.monotonic() > deadline:
                stop_process(proc)
                raise RuntimeError(f"did not start: {what}")
            time.sleep(0.1)
    raise RuntimeError(f"did not start in {START_ATTEMPTS} attempts: {what}")


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
    log = open(workdir / "redis.log", "ab")  # noqa: SIM115

    def launch(port: int) -> subprocess.Popen:
        return subprocess.Popen(
            [
                *(binary, "--port", str(port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,  # Ctrl-C reaches the stack, which stops this in order
            cwd=workdir,
        )

    def is_ours(port: int, proc: subprocess.Popen) -> bool:
        return _redis_pid(f"redis://127.0.0.1:{port}/0") == proc.pid

    try:
        proc, port = _start_on_free_port(
            launch, is_ours, 15, f"redis-server; see {workdir}/redis.log"
        )
    except BaseException:
        log.close()
        raise
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process(proc)
        log.close()


def _redis_pid(url: str) -> int | None:
    """The process id of the Redis answering at ``url`` (None when none answers)."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        with client:
            return int(client.info("server")["process_id"])
    except (redis.RedisError, OSError):
        return None


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


def init_cluster(bindir: Path, datadir: Path, env: dict[str, str] | None = None) -> None:
    """A new trust-auth cluster in ``datadir``, made as the postgres user when we are root
    (PostgreSQL refuses to run as root)."""
    subprocess.run(
        _as_postgres_user(
            [
                *(str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres"),
                *("--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8"),
            ]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/",
        env=env,
        timeout=120,
    )


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
    init_cluster(bindir, datadir / "data")
    log = open(log_path, "ab")  # noqa: SIM115

    def launch(port: int) -> subprocess.Popen:
        return subprocess.Popen(
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

    def is_ours(port: int, _proc: subprocess.Popen) -> bool:
        # The postmaster is not our child when it runs as the postgres user (runuser is):
        # the data directory says whose it is.
        return _pg_data_directory(_pg_url(port)) == str(datadir / "data")

    try:
        proc, port = _start_on_free_port(launch, is_ours, 30, f"PostgreSQL; see {log_path}")
    except BaseException:
        log.close()
        shutil.rmtree(datadir, ignore_errors=True)
        raise
    try:
        yield _pg_url(port)
    finally:
        stop_process(proc, timeout_s=20)  # SIGTERM is PostgreSQL's "smart" shutdown
        log.close()
        shutil.rmtree(datadir, ignore_errors=True)


def _pg_url(port: int) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def _pg_data_directory(url: str) -> str | None:
    """The data directory of the PostgreSQL answering at ``url`` (None when none answers)."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            row = conn.execute("SHOW data_directory").fetchone()
    except psycopg.Error:
        return None
    return row[0] if row else None
