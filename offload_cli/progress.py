"""A one-line progress bar on stderr: bytes, percent, rate and ETA (no dependencies)."""

from __future__ import annotations

import shutil
import sys
import threading
import time
from typing import TextIO

MiB = 1 << 20


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressBar:
    """Thread-safe: parts call :meth:`add` from any thread; redrawn at most every
    ``interval_s``. ``done`` counts bytes already there before this run (resumed parts)."""

    def __init__(
        self,
        label: str,
        total: int,
        done: int = 0,
        stream: TextIO | None = None,
        interval_s: float = 0.1,
    ):
        self.label = label
        self.total = max(total, 1)
        self.done = done
        self.base = done  # the rate counts only what this run sends
        self.stream = stream or sys.stderr
        self.interval_s = interval_s
        self.started = time.monotonic()
        self._drawn = 0.0
        self._lock = threading.Lock()
        self._width = 0

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.done += nbytes
            now = time.monotonic()
            if now - self._drawn >= self.interval_s:
                self._drawn = now
                self._draw(now)

    def line(self, now: float | None = None, width: int = 80) -> str:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.started, 1e-6)
        sent = self.done - self.base
        rate = sent / elapsed
        fraction = min(max(self.done / self.total, 0.0), 1.0)
        left = self.total - self.done
        eta = human_duration(left / rate) if rate > 0 and left > 0 else "--:--"
        stats = (
            f" {fraction * 100:5.1f}% {human_bytes(self.done)}/{human_bytes(self.total)}"
            f" {rate / MiB:6.1f} MiB/s ETA {eta}"
        )
        label = self.label if len(self.label) <= 24 else "…" + self.label[-23:]
        bar_width = max(10, width - len(label) - len(stats) - 4)
        filled = int(bar_width * fraction)
        return f"{label} [{'#' * filled}{'.' * (bar_width - filled)}]{stats}"

    def _draw(self, now: float) -> None:
        width = shutil.get_terminal_size((80, 20)).columns - 1
        text = self.line(now, width)
        self._width = max(self._width, len(text))
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()

    def close(self) -> None:
        with self._lock:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
