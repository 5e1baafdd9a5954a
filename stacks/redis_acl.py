"""The queue's Redis users and their ACL rules, defined once: the CDK app makes ElastiCache RBAC
users of them (``stacks/queue.py``) and the tests load the same rules into a real
``redis-server`` (``tests/support/redis_acl.py``). Plain Python on purpose: no CDK and no
runtime import, so both sides can use it.

Each role may touch only the queue's keys (``<hash-tagged prefix>:*``) and run only the
commands its code sends directly plus those that bullmq's Lua scripts call: a script runs its
commands under the caller's ACL, so a command a script needs must be granted to every role
that calls the script (``tests/test_redis_acl.py`` checks the lists against the scripts of the
installed bullmq, and reruns the worker and producer suites under these rules).

What the separation is worth, given that every role may run Lua (``EVALSHA``/``SCRIPT LOAD``
let a caller run any script of its own, within its own commands and keys):

- ``producer`` (enqueue, api, reconciler, queue-metrics Lambdas): adds jobs, retries a failed
  one, reads jobs and counts. It has no ``RPOPLPUSH``/``LMOVE``/``ZPOPMIN``/``BZPOPMIN`` (it
  cannot take a job off the wait list), no ``SET``/``PEXPIRE`` (cannot take or extend a job
  lock), no ``LREM`` (cannot complete or fail an active job).
- ``worker`` (the ECS workers): takes, locks, completes, fails and retries jobs; it can run
  the producer's scripts too (their commands are a subset of ``moveToFinished``'s).
- ``operator`` (the later ops view): every command of bullmq's queue administration
  (``obliterate``, ``clean``, ``pause``, ``getWorkers`` via ``CLIENT LIST``) but no blocking
  pop: it inspects and acts, it does not work jobs.
- ``default`` (ElastiCache requires a user of that name in every user group): ``off``, no
  command, no key; a connection that does not authenticate can do nothing.

No role has a dangerous command (``FLUSHALL``, ``CONFIG``, ``KEYS``, ``SCAN``, ``DEBUG``,
``SCRIPT FLUSH``, ``ACL``) or a pub/sub command, nor a key outside the prefix.
"""

from __future__ import annotations

import re

ROLES = ("producer", "worker", "operator")
DEFAULT_USER_ACCESS = "off -@all"

# Every connection: redis-py's health-check PING, bullmq's CLIENT SETNAME and its version
# check (INFO), and running its scripts the way redis-py's Script does (EVALSHA, then SCRIPT
# LOAD on NOSCRIPT; SCRIPT EXISTS in pipelines). Not CLIENT SETINFO: redis-py sends it on
# connect and ignores a refusal, and Redis 7.0 does not know it (an ACL naming it is refused).
_CONNECTION = (
    "ping",
    "info",
    "client|setname",
    "client|getname",
    "evalsha",
    "script|load",
    "script|exists",
)

# The producer's scripts: addStandardJob, addDelayedJob, addPrioritizedJob (Queue.add),
# addParentJob (FlowProducer.add: an upload's flow, whose nodes it sends in one MULTI/EXEC),
# getCounts (Queue.getJobCounts), getRanges (getJobs: the queue metrics' oldest waiting job),
# getState/getStateV2 (getJobState), reprocessJob
# (Job.retry, the API's retry route); directly: HGETALL (getJob), HDEL (the retry route
# clears the stalled counter).
_PRODUCER = (
    "del",
    "exec",
    "exists",
    "hdel",
    "hget",
    "hgetall",
    "hmget",
    "hmset",
    "hset",
    "incr",
    "lindex",
    "llen",
    "lpos",
    "lpush",
    "lrange",
    "multi",
    "rpop",
    "rpush",
    "sadd",
    "scard",
    "xadd",
    "zadd",
    "zcard",
    "zrange",
    "zrem",
    "zrevrange",
    "zrevrangebyscore",
    "zscore",
)

# The worker's scripts on top: moveToActive, moveToFinished, moveToDelayed, retryJob,
# moveStalledJobsToWait (SMEMBERS of the stalled set), extendLock(s), moveJobFromActiveToWait,
# getRateLimitTtl, isMaxed, updateProgress, addLog, saveStacktrace, updateData; the job
# schedulers (addJobScheduler, updateJobScheduler, getJobScheduler, removeJobScheduler) and
# removeJob (the retention system job); directly:
# BZPOPMIN on the marker key (the blocking wait for a job) and GET of the rate limiter key.
_WORKER = (
    *_PRODUCER,
    "bzpopmin",
    "get",
    "hexists",
    "hincrby",
    "lrem",
    "ltrim",
    "pexpire",
    "pttl",
    "rpoplpush",
    "set",
    "smembers",
    "srem",
    "xtrim",
    "zpopmin",
    "zrangebyscore",
    "zremrangebyrank",
    "zremrangebyscore",
)

# Queue administration on top of the worker's commands, less the blocking pop: obliterate,
# drain, clean, pause/resume (RENAME), remove, promote (LPOP), paginate (TYPE),
# getWorkers (CLIENT LIST), getJobs/getRanges, counts per priority.
_OPERATOR = (
    *(c for c in _WORKER if c != "bzpopmin"),
    "client|list",
    "hlen",
    "lpop",
    "lset",
    "rename",
    "sismember",
    "type",
    "zcount",
)

COMMANDS: dict[str, tuple[str, ...]] = {
    "producer": tuple(sorted({*_CONNECTION, *_PRODUCER})),
    "worker": tuple(sorted({*_CONNECTION, *_WORKER})),
    "operator": tuple(sorted({*_CONNECTION, *_OPERATOR})),
}

# A queue prefix as settings make it: a {hash tag}, letters, digits, - and _ (and * for the
# tests' one pattern over their per-test prefixes). Nothing else, so the key pattern below
# cannot be widened by glob characters.
_PREFIX = re.compile(r"\{[A-Za-z0-9_*-]+\}")


def key_pattern(prefix: str) -> str:
    """The keys of every queue under the hash-tagged ``prefix``: bullmq names them
    ``<prefix>:<queue>:<kind>[:<id>]``."""
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"queue prefix must be a {{hash tag}} of [A-Za-z0-9_-], got {prefix!r}")
    return f"~{prefix}:*"


def access_string(role: str, prefix: str) -> str:
    """The ACL rules of ``role`` (ElastiCache access-string syntax, which ``ACL SETUSER``
    takes too): on, the queue's keys, no command but the role's."""
    if role not in COMMANDS:
        raise ValueError(f"unknown Redis role {role!r}; one of {ROLES}")
    return " ".join(["on", key_pattern(prefix), "-@all", *(f"+{c}" for c in COMMANDS[role])])


def user_name(name_prefix: str, role: str) -> str:
    """The user's name (and id: IAM authentication wants them equal). ElastiCache users are
    per account and region, not per cache, hence the environment's prefix."""
    return f"{name_prefix}-{role}"
