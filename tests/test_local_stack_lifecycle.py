"""The local stack's own parts: throwaway servers when the configured ones do not answer, and
`python -m offload_local` starting, answering and stopping cleanly on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from urllib.parse import urlsplit

import psutil
import psycopg
import pytest
import redis

from offload_local import servers
from offload_local.stack import delete_keys, drop_schema
from tests.support.servers import database_url, redis_url, unique_name

# `python -m offload_local` and its throwaway servers, started for real
pytestmark = pytest.mark.e2e

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"
UNREACHABLE_PG = "postgresql://postgres@127.0.0.1:1/test"


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


def _listener(port: int) -> int | None:
    """The pid of the process listening on 127.0.0.1:``port``."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
            return conn.pid
    return None


def _ours(pid: int | None) -> bool:
    """Whether ``pid`` is a descendant of this test process."""
    return pid is not None and any(p.pid == os.getpid() for p in psutil.Process(pid).parents())


def _hand_out_first(monkeypatch: pytest.MonkeyPatch, taken: int) -> None:
    """``free_port`` returns ``taken`` once, then free ports: as when another process (a
    parallel test run) binds the port a server was about to bind."""
    ports = [taken]
    real = servers.free_port
    monkeypatch.setattr(servers, "free_port", lambda: ports.pop() if ports else real())


def test_a_throwaway_redis_when_the_configured_one_does_not_answer(tmp_path, monkeypatch):
    with servers.redis_server(UNREACHABLE_REDIS, tmp_path) as first:
        assert first != UNREACHABLE_REDIS
        # The second one is handed the first one's port: it must not take that Redis, which
        # answers there, for its own.
        _hand_out_first(monkeypatch, _port(first))
        with servers.redis_server(UNREACHABLE_REDIS, tmp_path) as url:
            assert _port(url) != _port(first)
            client = redis.Redis.from_url(url)
            assert client.ping()
            client.close()
            listener = _listener(_port(url))
            assert _ours(listener) and listener != _listener(_port(first))
        assert servers.redis_answers(first)
    assert not servers.redis_answers(url)  # stopped with the context
    assert not servers.redis_answers(first)


@pytest.mark.slow
def test_a_throwaway_postgres_when_the_configured_one_does_not_answer(tmp_path, monkeypatch):
    with servers.postgres_server(UNREACHABLE_PG, tmp_path) as first:
        assert first != UNREACHABLE_PG
        _hand_out_first(monkeypatch, _port(first))  # as above: taken, by a PostgreSQL
        with servers.postgres_server(UNREACHABLE_PG, tmp_path) as url:
            assert _port(url) != _port(first)
            with psycopg.connect(url) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
            listener = _listener(_port(url))
            assert _ours(listener) and listener != _listener(_port(first))
        assert servers.postgres_answers(first)
    assert not servers.postgres_answers(url)
    assert not servers.postgres_answers(first)


def test_moto_serves_on_a_port_no_one_can_take_first(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        _hand_out_first(monkeypatch, taken.getsockname()[1])
        with servers.moto_server() as endpoint:
            port = _port(endpoint)
            assert port != taken.getsockname()[1]
            with urllib.request.urlopen(endpoint + "/moto-api/", timeout=10) as answer:
                assert answer.status == 200
            assert _ours(_listener(port))
    assert _listener(port) is None  # stopped with the context


def test_the_configured_servers_are_used_when_they_answer(tmp_path):
    with servers.redis_server(redis_url(), tmp_path) as used:
        assert used == redis_url()
    with servers.postgres_server(database_url(), tmp_path) as used:
        assert used == database_url()


@pytest.mark.timeout(120)
def test_run_command_starts_everything_and_stops_cleanly_on_ctrl_c_even_twice(tmp_path):
    schema = unique_name("cli")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "offload_local", "--port", "0", "--workers", "2"),
            *("--workdir", str(tmp_path), "--schema", schema, "--queue-prefix", f"{{{schema}}}"),
        ],
        # the configured servers, as for the rest of the suite
        env={**os.environ, "REDIS_URL": redis_url(), "DATABASE_URL": database_url()},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []

    def read_until(text: str) -> None:
        deadline = time.monotonic() + 60
        while not any(text in line for line in output):
            assert time.monotonic() < deadline, "".join(output)
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "".join(output)
            output.append(line)

    try:
        read_until("Ctrl-C stops everything")
        text = "".join(output)
        assert "Web page" in text and "Password" in text
        info = json.loads((tmp_path / "stack.json").read_text())
        assert (info["redis_url"], info["database_url"]) == (redis_url(), database_url())
        with urllib.request.urlopen(info["web_url"] + "config.json", timeout=5) as answer:
            assert json.load(answer)["clientId"] == info["client_id"]
        children = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(child.cmdline()) for child in children)
        assert names.count("fargate_worker") >= 2 and servers.MOTO_MODULE in names

        proc.send_signal(signal.SIGINT)
        read_until("stopping: workers drain their jobs first")
        proc.send_signal(signal.SIGINT)  # an impatient second Ctrl-C, during the shutdown
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, rest
        assert "stopped." in rest
        _gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, [" ".join(p.cmdline()) for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        drop_schema(database_url(), schema)
        delete_keys(redis_url(), f"{{{schema}}}")


def test_a_taken_port_fails_fast_with_a_clear_message():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "offload_local", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 2
    assert f"127.0.0.1:{port} is taken" in done.stderr and "--port" in done.stderr


def test_timing_options_reach_the_stack_options():
    from offload_local.__main__ import parse_args

    options = parse_args(
        [
            *("--lock-duration-ms", "2000", "--stalled-interval-ms", "1500"),
            *("--max-stalled-count", "2", "--reconciler-every", "3", "--reconcile-after", "5"),
            *("--grace", "4", "--restart-delay", "-1", "--redis-url", "redis://127.0.0.1:1/0"),
            *("--env", "OFFLOAD_BACKOFF_MS=200", "--env", "EMPTY="),
        ]
    )
    assert (options.worker_lock_duration_ms, options.worker_stalled_interval_ms) == (2000, 1500)
    assert (options.worker_max_stalled_count, options.reconcile_after_s) == (2, 5)
    assert (options.reconciler_every_s, options.worker_grace_s) == (3, 4)
    assert options.worker_restart_delay_s is None
    assert options.redis_url == "redis://127.0.0.1:1/0"
    assert options.env["OFFLOAD_BACKOFF_MS"] == "200" and options.env["EMPTY"] == ""
    assert options.env["OFFLOAD_PART_SIZE_MIB"] == "5"  # the stack's own defaults stay
    shipped = parse_args([])
    assert shipped.worker_lock_duration_ms is None and shipped.reconcile_after_s is None
    with pytest.raises(SystemExit):
        parse_args(["--env", "NO_EQUALS_SIGN"])


@pytest.mark.timeout(120)
def test_a_worker_that_dies_is_replaced_as_the_ecs_service_does(settings, tmp_path):
    from offload_local.workers import WorkerFleet
    from tests.support.harness import env_for

    fleet = WorkerFleet(2, env_for(settings), tmp_path, tmp_path, restart_delay_s=0.5)
    fleet.start()
    try:
        first = fleet.pids()
        killed = fleet.send_signal(1, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while fleet.pids()[1] == killed:
            assert time.monotonic() < deadline, "worker 1 was not replaced"
            time.sleep(0.1)
        assert fleet.pids()[2] == first[2]  # the other one is left alone
        assert [(e.slot, e.pid, e.returncode) for e in fleet.exits] == [
            (1, killed, -signal.SIGKILL)
        ]
        assert psutil.Process(fleet.pids()[1]).cmdline()[-2:] == ["-m", "fargate_worker"]
    finally:
        fleet.stop(grace_s=10)
    processes = [psutil.Process(pid) for pid in fleet.pids().values() if psutil.pid_exists(pid)]
    _gone, alive = psutil.wait_procs(processes, timeout=5)
    assert not alive
    assert len(fleet.exits) == 1  # stopping the fleet replaces nothing
