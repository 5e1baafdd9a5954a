"""ECS task scale-in protection while jobs run.

Fargate gives a task at most 120 s between SIGTERM and SIGKILL, far less than a long job
needs. With protection set, the service's scale-in skips this task while it has jobs; when it
goes idle the protection is cleared so the service can shrink (to zero). Outside ECS
(``ECS_AGENT_URI`` unset) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request

log = logging.getLogger(__name__)


class TaskProtection:
    def __init__(self, agent_uri: str | None, expires_minutes: int):
        self._url = f"{agent_uri.rstrip('/')}/task-protection/v1/state" if agent_uri else None
        self._expires_minutes = expires_minutes
        self._active_jobs = 0
        self._renewer: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return self._url is not None

    def _put(self, protect: bool) -> None:
        body: dict[str, object] = {"ProtectionEnabled": protect}
        if protect:
            body["ExpiresInMinutes"] = self._expires_minutes
        request = urllib.request.Request(
            self._url or "",
            data=json.dumps(body).encode(),
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()

    async def _set(self, protect: bool) -> None:
        try:
            await asyncio.to_thread(self._put, protect)
            log.info("task scale-in protection %s", "set" if protect else "cleared")
        except OSError as exc:
            # Losing protection is survivable (stalled recovery re-runs the job); failing
            # the job because the agent hiccuped is not.
            log.warning("task scale-in protection call failed: %s", exc)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._expires_minutes * 60 / 2)
            await self._set(True)

    async def job_started(self) -> None:
        if not self.enabled:
            return
        async with self._lock:
            self._active_jobs += 1
            if self._active_jobs == 1:
                await self._set(True)
                self._renewer = asyncio.ensure_future(self._renew())

    async def job_finished(self) -> None:
        if not self.enabled:
            return
        async with self._lock:
            self._active_jobs -= 1
            if self._active_jobs == 0:
                if self._renewer:
                    self._renewer.cancel()
                    self._renewer = None
                await self._set(False)
