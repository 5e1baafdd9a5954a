"""N worker processes (``python -m fargate_worker``, the container's entrypoint), stopped the
way ECS stops a task: SIGTERM, the grace period, then SIGKILL."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path


class WorkerFleet:
    def __init__(self, count: int, env: Mapping[str, str], logdir: Path, workdir: Path):
        self.count = count
        self._env = dict(env)
        self._logdir = logdir
        self._workdir = workdir
        self.processes: list[subprocess.Popen] = []

    def start(self) -> None:
        for index in range(1, self.count + 1):
            health_file = self._workdir / f"worker-{index}.health"
            env = {**self._env, "OFFLOAD_HEALTH_FILE": str(health_file)}
            with open(self._logdir / f"worker-{index}.log", "ab") as log:
                self.processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "fargate_worker"],
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        process_group=0,  # Ctrl-C reaches the stack, not the workers
                    )
                )

    def stop(self, grace_s: float) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace_s
        for proc in self.processes:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
