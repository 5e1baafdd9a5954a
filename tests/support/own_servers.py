"""Redis and PostgreSQL servers of a test's own, on free ports, for fault tests: unlike the
shared servers at 6379 and 5432 (which other test runs use at the same time), these can be
killed, restarted on the same port and data, flushed or stopped.

Every process started here, and by the stack a system test runs, carries ``RUN_MARKER`` in its
environment with the run's id, so that ``sweep`` finds whatever a failing run left behind,
however deep in the process tree (sandbox children of a worker of the stack, backends of
PostgreSQL), and only that.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import redis

from offload_local.servers import (
    _as_postgres_user,
    _pg_bindir,
    _pg_data_directory,
    _pg_url,
    _redis_pid,
    _start_on_free_port,
    init_cluster,
    stop_process,
)

RUN_MARKER = "OFFLOAD_SYSTEM_RUN"


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def marked_env(run_id: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, RUN_MARKER: run_id, **(extra or {})}


def marked_processes(run_id: str) -> list[psutil.Process]:
    """Every live process whose environment carries this run's marker."""
    found = []
    wanted = f"{RUN_MARKER}={run_id}".encode()
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            # /proc/<pid>/environ as written at exec: inherited, never changed by the process
            with open(f"/proc/{proc.pid}/environ", "rb") as environ:
                if wanted in environ.read().split(b"\0"):
                    found.append(proc)
        except OSError:  # gone, or a kernel thread
            continue
    return [p for p in found if _running(p)]


def sweep(run_id: str, timeout_s: float = 10.0) -> list[str]:
    """SIGKILLs every process left with this run's marker; returns their command lines (what
    the run failed to stop, for the report)."""
    left = marked_processes(run_id)
    described = []
    for proc in left:
        with contextlib.suppress(psutil.Error):
            described.append(f"{proc.pid} {' '.join(proc.cmdline())}")
            proc.kill()
    psutil.wait_procs(left, timeout=timeout_s)
    return described


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class OwnRedis:
    """``redis-server`` with AOF on (``appendfsync`` as given), data in ``workdir``, on a port
    that stays the same across restarts (clients reconnect to the same URL). ``extra_args`` go
    on its command line; ``credentials`` (``user:password@``) into its URL, for a server whose
    default user is off."""

    def __init__(
        self,
        workdir: Path,
        run_id: str,
        appendfsync: str = "everysec",
        *,
        extra_args: tuple[str, ...] = (),
        credentials: str = "",
    ):
        self.workdir = workdir
        self.run_id = run_id
        self.appendfsync = appendfsync
        self.extra_args = extra_args
        self.credentials = credentials
        self.port = 0  # chosen at the first start
        self.proc: subprocess.Popen | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://{self.credentials}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _launch(self, port: int) -> subprocess.Popen:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("no redis-server binary: run scripts/setup.sh first")
        with open(self.workdir / "redis.log", "ab") as log:
            return subprocess.Popen(
                [
                    *(binary, "--port", str(port), "--bind", "127.0.0.1"),
                    *("--dir", str(self.workdir), "--save", ""),
                    *("--appendonly", "yes", "--appendfsync", self.appendfsync),
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=marked_env(self.run_id),
                start_new_session=True,
            )

    def _is_ours(self, port: int, proc: subprocess.Popen) -> bool:
        return _redis_pid(f"redis://{self.credentials}127.0.0.1:{port}/0") == proc.pid

    def start(self, timeout_s: float = 30.0) -> None:
        """The first start picks a free port (race-free); a restart takes the same one."""
        what = f"redis-server; see {self.workdir}/redis.log"
        if not self.port:
            self.proc, self.port = _start_on_free_port(self._launch, self._is_ours, timeout_s, what)
            return
        self.proc = self._launch(self.port)
        _wait_ours(self.proc, lambda: self._is_ours(self.port, self.proc), timeout_s, what)

    def kill(self) -> None:
        """SIGKILL: what survives is what the AOF holds."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def flushall(self) -> None:
        """Every key gone, as after a failover to an empty replica."""
        client = redis.Redis.from_url(self.url)
        try:
            client.flushall()
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


class OwnPostgres:
    """A throwaway PostgreSQL cluster (``initdb`` once, trust auth) that can be stopped and
    started again on the same port and data, as RDS is during a reboot or failover. Run as the
    postgres user when the caller is root (PostgreSQL refuses root)."""

    def __init__(self, workdir: Path, run_id: str):
        self.workdir = workdir
        self.run_id = run_id
        self.port = 0  # chosen at the first start
        self.bindir = _pg_bindir()
        # Under /tmp, not workdir: the postgres user must be able to reach it.
        self.root = Path(tempfile.mkdtemp(prefix="offload-system-pg-"))
        self.datadir = self.root / "data"
        self.proc: subprocess.Popen | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        init_cluster(self.bindir, self.datadir, env=marked_env(run_id))

    @property
    def url(self) -> str:
        return _pg_url(self.port)

    def _launch(self, port: int) -> subprocess.Popen:
        with open(self.workdir / "postgresql.log", "ab") as log:
            return subprocess.Popen(
                _as_postgres_user(
                    [
                        *(str(self.bindir / "postgres"), "-D", str(self.datadir)),
                        *("-p", str(port), "-k", str(self.root)),
                        *("-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"),
                        *("-c", "max_connections=200"),
                    ]
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd="/",
                env=marked_env(self.run_id),
                start_new_session=True,
            )

    def _is_ours(self, port: int, _proc: subprocess.Popen) -> bool:
        return _pg_data_directory(_pg_url(port)) == str(self.datadir)

    def start(self, timeout_s: float = 60.0) -> None:
        """The first start picks a free port (race-free); a restart takes the same one."""
        what = f"PostgreSQL; see {self.workdir}/postgresql.log"
        if not self.port:
            self.proc, self.port = _start_on_free_port(self._launch, self._is_ours, timeout_s, what)
            return
        self.proc = self._launch(self.port)
        proc = self.proc
        _wait_ours(proc, lambda: self._is_ours(self.port, proc), timeout_s, what)

    def postmaster(self) -> psutil.Process | None:
        """The postmaster (the ``runuser`` wrapper's child when run as root)."""
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
            return psutil.Process(pid)
        except (OSError, ValueError, IndexError, psutil.Error):
            return None

    def stop(self, timeout_s: float = 30.0) -> None:
        """Fast shutdown (SIGINT to the postmaster): sessions are cut, as in a reboot."""
        if self.proc is None or self.proc.poll() is not None:
            return
        postmaster = self.postmaster()
        if postmaster is not None:
            with contextlib.suppress(psutil.Error):
                postmaster.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            if postmaster is not None:
                with contextlib.suppress(psutil.Error):
                    postmaster.kill()
            stop_process(self.proc)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _wait_ours(
    proc: subprocess.Popen, is_ours: Callable[[], bool], timeout_s: float, what: str
) -> None:
    """Until the server restarted on its old port answers as itself; its exit (the port was
    taken meanwhile) or a timeout is an error."""
    deadline = time.monotonic() + timeout_s
    while not is_ours():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"did not restart on its port: {what}")
        time.sleep(0.1)
