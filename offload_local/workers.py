"""N worker processes (``python -m fargate_worker``, the container's entrypoint), run the way the
ECS service runs its tasks: a worker that exits (crash, SIGKILL, or a SIGTERM it drained on) is
replaced after ``restart_delay_s`` to keep the desired count, and the fleet is stopped the way
ECS stops a task: SIGTERM, the grace period, then SIGKILL."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("offload_local.workers")


@dataclass(frozen=True)
class WorkerExit:
    """A worker that ended while the fleet ran (``returncode`` < 0: killed by that signal)."""

    slot: int
    pid: int
    returncode: int
    at: float  # time.time()


class WorkerFleet:
    def __init__(
        self,
        count: int,
        env: Mapping[str, str],
        logdir: Path,
        workdir: Path,
        restart_delay_s: float | None = 1.0,
    ):
        """``restart_delay_s``: how long after a worker exits its replacement starts (ECS takes
        a few seconds to start a task); None: exited workers are not replaced."""
        self.count = count
        self._env = dict(env)
        self._logdir = logdir
        self._workdir = workdir
        self._restart_delay_s = restart_delay_s
        self._lock = threading.Lock()
        self._current: dict[int, subprocess.Popen] = {}  # slot (1..count) -> its process
        self.exits: list[WorkerExit] = []
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="worker-fleet", daemon=True)

    @property
    def processes(self) -> list[subprocess.Popen]:
        """The current process of each slot, in slot order."""
        with self._lock:
            return [self._current[slot] for slot in sorted(self._current)]

    def pids(self) -> dict[int, int]:
        """Slot -> pid of the worker process running in it now."""
        with self._lock:
            return {slot: proc.pid for slot, proc in self._current.items()}

    def start(self) -> None:
        for slot in range(1, self.count + 1):
            self._spawn(slot)
        if self._restart_delay_s is not None:
            self._watcher.start()

    def _spawn(self, slot: int) -> subprocess.Popen:
        health_file = self._workdir / f"worker-{slot}.health"
        env = {**self._env, "OFFLOAD_HEALTH_FILE": str(health_file)}
        with open(self._logdir / f"worker-{slot}.log", "ab") as worker_log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fargate_worker"],
                env=env,
                stdout=worker_log,
                stderr=subprocess.STDOUT,
                process_group=0,  # Ctrl-C reaches the stack, not the workers
            )
        with self._lock:
            self._current[slot] = proc
        return proc

    def send_signal(self, slot: int, signum: int = signal.SIGKILL) -> int:
        """Sends ``signum`` to the worker in ``slot`` (SIGKILL: a crash or an out-of-memory kill;
        SIGTERM: ECS stopping the task); the fleet replaces it once it has exited. Returns the
        pid signalled."""
        with self._lock:
            proc = self._current[slot]
        proc.send_signal(signum)
        return proc.pid

    def _watch(self) -> None:
        """Replaces exited workers, as the ECS service keeps its desired count."""
        due: dict[int, float] = {}  # slot -> when its replacement starts
        while not self._stopping.wait(0.2):
            with self._lock:
                current = dict(self._current)
            for slot, proc in current.items():
                if slot in due or proc.poll() is None:
                    continue
                self.exits.append(WorkerExit(slot, proc.pid, proc.returncode, time.time()))
                log.warning(
                    "worker %d (pid %d) exited with %s; replacing it in %.1f s",
                    slot,
                    proc.pid,
                    _describe(proc.returncode),
                    self._restart_delay_s,
                )
                due[slot] = time.monotonic() + (self._restart_delay_s or 0.0)
            for slot, at in list(due.items()):
                if time.monotonic() >= at and not self._stopping.is_set():
                    del due[slot]
                    proc = self._spawn(slot)
                    log.info("worker %d replaced: pid %d", slot, proc.pid)

    def stop(self, grace_s: float) -> None:
        self._stopping.set()
        if self._watcher.is_alive():
            self._watcher.join()
        processes = self.processes
        for proc in processes:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace_s
        for proc in processes:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"
