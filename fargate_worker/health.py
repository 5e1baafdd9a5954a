"""Container health: a heartbeat file the event loop rewrites, checked by
``python -m fargate_worker.health`` (the container's HEALTHCHECK command).

A file, not an HTTP port: nothing to expose or secure, and a blocked event loop (the failure
that matters) stops the heartbeat just as surely.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path


async def heartbeat(path: str, interval_s: float, status: Callable[[], dict]) -> None:
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    while True:
        tmp.write_text(json.dumps({"ts": time.time(), **status()}))
        os.replace(tmp, target)
        await asyncio.sleep(interval_s)


def check(path: str, max_age_s: float) -> tuple[bool, str]:
    try:
        beat = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        return False, f"no heartbeat: {exc}"
    age = time.time() - float(beat.get("ts", 0))
    if age > max_age_s:
        return False, f"heartbeat is {age:.0f}s old"
    return True, f"ok ({age:.0f}s old)"


def main(argv: list[str] | None = None) -> int:
    from offload.settings import Settings
    from offload.usage import parse_env_only_args

    parse_env_only_args(
        "python -m fargate_worker.health",
        "The worker container's health check: exit 0 when the worker's heartbeat file "
        "(OFFLOAD_HEALTH_FILE) is younger than three heartbeat intervals, else 1.",
        argv,
    )
    settings = Settings.from_env()
    healthy, detail = check(settings.health_file, 3 * settings.health_interval_s)
    print(detail)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
