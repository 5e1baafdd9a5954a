"""Worker runtime duties: ECS scale-in protection, health heartbeat, EMF metrics, connections."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis

from fargate_worker import health
from fargate_worker.protection import TaskProtection
from offload.metrics import MetricsEmitter
from tests.support.harness import add, producer, running_worker, wait_for, wait_for_state
from tests.support.redis_acl import as_environment


class _AgentHandler(BaseHTTPRequestHandler):
    calls: list[tuple[str, str, dict]] = []

    def do_PUT(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append((self.command, self.path, body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def _agent():
    handler = type("Handler", (_AgentHandler,), {"calls": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler.calls


def test_scale_in_protection_set_while_busy_and_cleared_when_idle(settings):
    server, calls = _agent()
    settings = replace(
        settings, ecs_agent_uri=f"http://127.0.0.1:{server.server_port}", concurrency=2
    )

    async def scenario():
        async with producer(settings) as prod, running_worker(settings):
            await asyncio.sleep(1.5)
            idle_calls = list(calls)
            first = await add(prod, "sleep", "1")
            second = await add(prod, "sleep", "1.2")
            await wait_for_state(settings, first, "completed")
            await wait_for_state(settings, second, "completed")
            await wait_for(lambda: len(calls) >= 2)
            return idle_calls

    try:
        idle_calls = asyncio.run(scenario())
    finally:
        server.shutdown()
    assert idle_calls == []  # an idle worker leaves its task unprotected (scale to zero)
    assert [path for _, path, _ in calls] == ["/task-protection/v1/state"] * 2
    assert calls[0] == (
        "PUT",
        "/task-protection/v1/state",
        {"ProtectionEnabled": True, "ExpiresInMinutes": settings.task_protection_minutes},
    )
    assert calls[1][2] == {"ProtectionEnabled": False}


def test_protection_is_a_noop_outside_ecs():
    protection = TaskProtection(None, 60)

    async def scenario():
        await protection.job_started()
        await protection.job_finished()

    asyncio.run(scenario())
    assert not protection.enabled


def test_protection_failure_does_not_fail_the_job(settings):
    settings = replace(settings, ecs_agent_uri="http://127.0.0.1:9")  # nothing listens

    async def scenario():
        async with producer(settings) as prod, running_worker(settings):
            job_id = await add(prod, "noop", "k")
            return await wait_for_state(settings, job_id, "completed")

    assert asyncio.run(scenario())["attempt"] == 1


def _beat(path: Path) -> tuple[str, int] | None:
    """The heartbeat file's content and mtime (None before the first beat)."""
    try:
        return path.read_text(), path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


@pytest.mark.slow
def test_health_heartbeat_is_rewritten_while_running_and_not_after_shutdown(settings):
    path = Path(settings.health_file)
    path.unlink(missing_ok=True)
    interval = settings.health_interval_s

    async def scenario():
        beats: list[tuple[str, int]] = []

        def new_beat() -> bool:
            beat = _beat(path)
            if beat is not None and beat not in beats:
                beats.append(beat)
            return len(beats) >= 3

        async with running_worker(settings):
            # three different beats: written, then rewritten at least twice
            await wait_for(new_beat, timeout_s=30 * interval)
            healthy = health.check(str(path), 3 * interval)
        last = _beat(path)
        # A stopped worker must not keep beating: whatever a beat in progress at the shutdown
        # wrote has landed by now, and a loop still running would rewrite the file within
        # one interval; three go by.
        await asyncio.sleep(3 * interval)
        return beats, healthy, last, _beat(path)

    beats, (healthy, detail), last, after = asyncio.run(scenario())
    stamps = [json.loads(content)["ts"] for content, _ in beats]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3, stamps
    assert healthy, detail
    assert after == last, "the heartbeat went on after the shutdown"
    stale, detail = health.check(str(path), 2 * interval)  # 3 intervals old by now
    assert not stale and "old" in detail
    missing, detail = health.check(settings.health_file + ".missing", 30)
    assert not missing and "no heartbeat" in detail


def test_metrics_are_emf_documents():
    out = io.StringIO()
    MetricsEmitter("Offload", {"Queue": "uploads"}, out).emit(
        {"JobsCompleted": (1, "Count"), "JobDuration": (12.5, "Milliseconds")},
        {"JobId": "inspect-abc"},
    )
    document = json.loads(out.getvalue())
    directive = document["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "Offload"
    assert directive["Dimensions"] == [["Queue"]]
    assert {m["Name"] for m in directive["Metrics"]} == {"JobsCompleted", "JobDuration"}
    assert document["Queue"] == "uploads" and document["JobDuration"] == 12.5
    assert document["JobId"] == "inspect-abc"


def test_worker_uses_two_redis_connections_whatever_its_concurrency(settings):
    settings = replace(settings, concurrency=6)

    async def scenario():
        async with running_worker(settings) as worker:
            await asyncio.sleep(1)
            prefix = worker.bull.qualifiedName
            clients = redis.Redis.from_url(as_environment(settings).redis_url).client_list()
            return [c for c in clients if c["name"].startswith(prefix)]

    ours = asyncio.run(scenario())
    assert len(ours) == 2, ours  # one for commands, one for the blocking wait
