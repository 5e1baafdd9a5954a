"""The local stack's own parts: throwaway servers when the configured ones do not answer, and
`python -m offload_local` starting, answering and stopping cleanly on Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request

import psutil
import psycopg
import pytest
import redis

from offload_local import servers
from offload_local.stack import drop_schema
from tests.support.servers import database_url, unique_name

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"
UNREACHABLE_PG = "postgresql://postgres@127.0.0.1:1/test"


def test_a_throwaway_redis_when_the_configured_one_does_not_answer(tmp_path):
    with servers.redis_server(UNREACHABLE_REDIS, tmp_path) as url:
        assert url != UNREACHABLE_REDIS
        client = redis.Redis.from_url(url)
        assert client.ping()
        client.close()
    assert not servers.redis_answers(url)  # stopped with the context


def test_a_throwaway_postgres_when_the_configured_one_does_not_answer(tmp_path):
    with servers.postgres_server(UNREACHABLE_PG, tmp_path) as url:
        assert url != UNREACHABLE_PG
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert not servers.postgres_answers(url)


def test_the_configured_servers_are_used_when_they_answer(tmp_path):
    url = "redis://127.0.0.1:6379/0"
    with servers.redis_server(url, tmp_path) as used:
        assert used == url


@pytest.mark.timeout(120)
def test_run_command_starts_everything_and_stops_cleanly_on_ctrl_c_even_twice(tmp_path):
    schema = unique_name("cli")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "offload_local", "--port", "0", "--workers", "2"),
            *("--workdir", str(tmp_path), "--schema", schema, "--queue-prefix", f"{{{schema}}}"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = []
    try:
        deadline = time.monotonic() + 60
        while not any("Ctrl-C stops everything" in line for line in output):
            assert time.monotonic() < deadline, "".join(output)
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "".join(output)
            output.append(line)
        text = "".join(output)
        assert "Web page" in text and "Password" in text
        info = json.loads((tmp_path / "stack.json").read_text())
        with urllib.request.urlopen(info["web_url"] + "config.json", timeout=5) as answer:
            assert json.load(answer)["clientId"] == info["client_id"]
        children = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(child.cmdline()) for child in children)
        assert names.count("fargate_worker") >= 2 and "moto.server" in names

        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)  # an impatient second Ctrl-C
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


def test_a_taken_port_fails_fast_with_a_clear_message():
    import socket

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
