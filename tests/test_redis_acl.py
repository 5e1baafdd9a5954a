"""The queue's Redis ACL (stacks/redis_acl.py, the rules ElastiCache gets) on a real
redis-server: each role can do its part of the pipeline as its own user, and nothing else.

The whole worker and producer suites rerun under these rules with
``scripts/test_redis_acl.sh`` (each test as the worker or the producer user); here are the
negative tests, one pipeline run with each role as its own user, and the check that the lists
cover what bullmq's scripts call (a script runs its commands under the caller's ACL).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import asdict, replace
from pathlib import Path

import bullmq
import pytest
import redis
from bullmq import Queue
from bullmq.redis_connection import SCRIPT_DEFINITIONS

from lambdas.queue_metrics import snapshot
from offload.jobs import JobRef
from offload.queue import open_queue, producer
from stacks import redis_acl
from tests.support.harness import queue_job_in_state, running_worker, wait_for
from tests.support.redis_acl import ADMIN, AclRedis
from tests.support.servers import unique_name

# The bullmq scripts each role's code runs (offload/queue.py, lambdas/, offload/reconcile.py,
# offload/jobs_service.py; fargate_worker/ through bullmq's Worker).
PRODUCER_SCRIPTS = (
    "addStandardJob",
    "addParentJob",
    "addDelayedJob",
    "addPrioritizedJob",
    "getCounts",
    "getRanges",
    "getState",
    "getStateV2",
    "reprocessJob",
)
WORKER_SCRIPTS = (
    *PRODUCER_SCRIPTS,
    "moveToActive",
    "moveToFinished",
    "moveToDelayed",
    "retryJob",
    "moveStalledJobsToWait",
    "extendLock",
    "extendLocks",
    "updateProgress",
    "saveStacktrace",
    "updateData",
    # fargate_worker.schedules and the system jobs (Queue.upsertJobScheduler, the scheduler's
    # next iteration, getJobScheduler, removeJobScheduler; retention's Queue.remove)
    "addJobScheduler",
    "updateJobScheduler",
    "getJobScheduler",
    "removeJobScheduler",
    "removeJob",
)
OPERATOR_SCRIPTS = tuple(SCRIPT_DEFINITIONS)  # all of bullmq's queue administration
SCRIPTS = {"producer": PRODUCER_SCRIPTS, "worker": WORKER_SCRIPTS, "operator": OPERATOR_SCRIPTS}
COMMANDS_DIR = Path(bullmq.__file__).parent / "commands"
# rcall("HGET", ...) or rcall('HGET', ...), and the commands scripts pick by name ("LPUSH" or
# "RPUSH" into pushCmd)
_LITERAL_CALL = re.compile(r"""rcall\(["']([A-Za-z]+)["']""")
_NAMED_COMMAND = re.compile(r'(?:Cmd|Command)\s*=\s*"([A-Z]+)"|"([LR]PUSH)"')


def script_commands(name: str) -> set[str]:
    text = (COMMANDS_DIR / SCRIPT_DEFINITIONS[name]).read_text()
    named = {a or b for a, b in _NAMED_COMMAND.findall(text)}
    return {c.lower() for c in {*_LITERAL_CALL.findall(text), *named}}


# Called only for bullmq's deduplication/debounce job option, which offload never sets (below):
# not granted, so a producer cannot SET (a job lock, say).
DEDUPLICATION_ONLY = {"set", "get", "pttl", "persist"}


@pytest.mark.parametrize("role", redis_acl.ROLES)
def test_each_roles_commands_cover_what_its_bullmq_scripts_call(role):
    needed = set().union(*(script_commands(name) for name in SCRIPTS[role]))
    assert needed - set(redis_acl.COMMANDS[role]) <= DEDUPLICATION_ONLY


def test_offload_adds_no_job_with_deduplication():
    from offload.settings import Settings

    options = Settings().default_job_options()
    assert not {"deduplication", "debounce"} & set(options)


def test_only_the_roles_commands_are_granted_and_no_dangerous_one():
    dangerous = {"flushall", "flushdb", "config", "keys", "scan", "debug", "acl", "eval"}
    for role in redis_acl.ROLES:
        assert not dangerous & set(redis_acl.COMMANDS[role])
        rules = redis_acl.access_string(role, "{offload}").split()
        assert rules[:3] == ["on", "~{offload}:*", "-@all"]
        assert all(rule.startswith("+") and "@" not in rule for rule in rules[3:])
    assert "bzpopmin" not in redis_acl.COMMANDS["operator"]


@pytest.mark.parametrize("prefix", ["offload", "{a*}:*", "{a}b", "{a?}", "{a[b]}", ""])
def test_a_prefix_that_could_widen_the_key_pattern_is_refused(prefix):
    with pytest.raises(ValueError, match="hash tag"):
        redis_acl.key_pattern(prefix)


def _client(server: AclRedis, user: str) -> redis.Redis:
    return redis.Redis.from_url(server.url_as(user), decode_responses=True)


def _denied(call) -> bool:
    try:
        call()
    except redis.exceptions.NoPermissionError:
        return True
    except redis.exceptions.ResponseError as error:
        # a command refused inside a script
        return "can't run this command" in str(error) or "no permissions" in str(error)
    return False


def test_default_user_can_do_nothing(acl_redis):
    anonymous = redis.Redis.from_url(acl_redis.anonymous_url)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(acl_redis.anonymous_url, username="default", password="x").ping()
    (rules,) = [u for u in _client(acl_redis, ADMIN).acl_list() if u.startswith("user default ")]
    assert rules.split()[2] == "off" and "-@all" in rules and "~" not in rules


@pytest.mark.parametrize("role", redis_acl.ROLES)
def test_no_role_reaches_a_key_outside_the_queue_prefix(acl_redis, role):
    client = _client(acl_redis, role)
    inside = "{test_" + unique_name("x") + "}:uploads:1"
    client.hset(inside, "name", "ok")  # the role's own keys: allowed
    assert client.hgetall(inside) == {"name": "ok"}
    _client(acl_redis, ADMIN).hset("{other}:uploads:1", "name", "secret")
    script = client.register_script("return redis.call('HGETALL', KEYS[1])")
    for key in ("{other}:uploads:1", "offload:uploads:1", "uploads:1", "test_x:uploads:1"):
        assert _denied(lambda key=key: client.hgetall(key)), key
        # nor through a script, which runs under the caller's ACL
        assert _denied(lambda key=key: script(keys=[key])), key


@pytest.mark.parametrize("role", redis_acl.ROLES)
def test_no_role_has_an_admin_or_dangerous_command(acl_redis, role):
    client = _client(acl_redis, role)
    calls = {
        "FLUSHALL": client.flushall,
        "FLUSHDB": client.flushdb,
        "CONFIG GET": lambda: client.config_get("*"),
        "KEYS": lambda: client.keys("*"),
        "SCAN": lambda: client.scan(0),
        "SCRIPT FLUSH": client.script_flush,
        "EVAL": lambda: client.eval("return 1", 0),
        "ACL LIST": client.acl_list,
        "BGSAVE": client.bgsave,
        "PUBLISH": lambda: client.publish("{test_x}:c", "m"),
        "CLIENT KILL": lambda: client.client_kill_filter(_id=1),
        "SHUTDOWN": lambda: client.execute_command("SHUTDOWN", "NOSAVE"),
    }
    allowed = [name for name, call in calls.items() if not _denied(call)]
    assert allowed == []


def test_the_producer_cannot_take_a_job(acl_redis):
    """bullmq takes a job with moveToActive (RPOPLPUSH from the wait list to active, a lock
    with SET) and waits for one with BZPOPMIN: none of that runs as the producer."""
    client = _client(acl_redis, "producer")
    prefix = "{test_" + unique_name("x") + "}:uploads"
    client.lpush(f"{prefix}:wait", "1")  # as addStandardJob does
    for call in (
        lambda: client.rpoplpush(f"{prefix}:wait", f"{prefix}:active"),
        lambda: client.lmove(f"{prefix}:wait", f"{prefix}:active"),
        lambda: client.bzpopmin(f"{prefix}:marker", 0.01),
        lambda: client.zpopmin(f"{prefix}:prioritized"),
        lambda: client.set(f"{prefix}:1:lock", "token", px=30000),
        lambda: client.lrem(f"{prefix}:active", 1, "1"),
    ):
        assert _denied(call)
    take = client.register_script((COMMANDS_DIR / SCRIPT_DEFINITIONS["moveToActive"]).read_text())
    keys = [f"{prefix}:{k}" for k in ("wait", "active", "prioritized", "events", "stalled")]
    keys += [f"{prefix}:{k}" for k in ("limiter", "delayed", "paused", "meta", "pc", "marker")]
    assert _denied(lambda: take(keys=keys, args=[f"{prefix}:", 1, b""]))
    assert client.lrange(f"{prefix}:wait", 0, -1) == ["1"]


def test_roles_run_the_pipeline_each_as_its_own_user(acl_redis, settings):
    """The producer adds a job and reads counts (queue metrics), the worker runs it, the
    operator lists the workers and removes the job, each as its own user on the ACL'd
    server."""
    prefix = "{test_" + unique_name("pipe") + "}"
    _client(acl_redis, ADMIN).acl_log_reset()  # the negative tests' denials are expected

    def as_role(role: str):
        return replace(settings, redis_url=acl_redis.url_as(role), queue_prefix=prefix)

    async def scenario() -> tuple[dict, list, dict]:
        async with producer(as_role("producer")) as made:
            job_id = await made.enqueue("noop", JobRef(bucket="b", key="k/1"), None)
            async with running_worker(as_role("worker")):
                # waited for: removing a job still active (locked) would remove nothing
                await wait_for(lambda: queue_job_in_state(made.queue, job_id, "completed"))
                operator = Queue(as_role("operator").queue_name, _queue_opts(as_role("operator")))
                try:
                    workers = await operator.get_workers()
                    assert await operator.remove(job_id) == 1
                    after = await operator.getJobCounts("completed")
                finally:
                    await operator.close()
            queue = open_queue(as_role("producer"))
            try:
                counts = asdict(await snapshot(queue))
            finally:
                await queue.close()
        return counts, workers, after

    counts, workers, after = asyncio.run(scenario())
    assert counts["waiting"] == 0 and counts["failed"] == 0
    assert len(workers) >= 1
    assert after == {"completed": 0}
    assert acl_redis.denials() == []


def _queue_opts(settings) -> dict:
    from offload.queue import queue_options

    return queue_options(settings)
