"""A ``redis-server`` of the test run's own with the queue's ACL users (``stacks/redis_acl.py``,
the rules the CDK app gives ElastiCache), for the ACL tests and for rerunning the worker and
producer suites as those users (``OFFLOAD_TEST_REDIS_ACL=<role>``, scripts/test_redis_acl.sh).

The users' key pattern covers every per-test prefix (``{test_<hex>}``, tests/conftest.py) and
nothing else. Beside the roles the server has an ``admin`` user of the tests' own (every
command, every key): the fixtures clean up and look at the server with it, as no role may.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import redis

from offload.settings import Settings
from stacks import redis_acl
from tests.support.own_servers import OwnRedis

TEST_PREFIX_PATTERN = "{test_*}"  # tests/conftest.py's queue_prefix: "{test_<hex>}"
ADMIN = "admin"
URLS_ENV = "OFFLOAD_TEST_REDIS_ACL_URLS"  # {user: url} of this process's ACL'd server


def as_user(settings: Settings, user: str) -> Settings:
    """``settings`` logging in as ``user`` when they point at the ACL'd server (the suite
    rerun under the ACL), else unchanged: the worker runs as the worker user there whoever
    the test is (tests/support/harness.py)."""
    urls = json.loads(os.environ.get(URLS_ENV, "{}"))
    if settings.redis_url not in urls.values():
        return settings
    return replace(settings, redis_url=urls[user])


def as_environment(settings: Settings) -> Settings:
    """``settings`` for what a test does as the world around the system, not as one of its
    roles (losing a job as a failover would, listing the server's clients): the ACL'd
    server's admin under the ACL."""
    return as_user(settings, ADMIN)


def acl_lines(passwords: dict[str, str]) -> list[str]:
    """The server's ACL file: each role's rules as ElastiCache gets them, with its password."""
    lines = [f"user default reset {redis_acl.DEFAULT_USER_ACCESS}"]
    for role in redis_acl.ROLES:
        rules = redis_acl.access_string(role, TEST_PREFIX_PATTERN)
        lines.append(f"user {role} reset >{passwords[role]} {rules}")
    lines.append(f"user {ADMIN} reset on >{passwords[ADMIN]} ~* &* +@all")
    return lines


class AclRedis(OwnRedis):
    """OwnRedis started with ``--aclfile``: its default user is off, so its own URL (and the
    "is it ours" check at start) authenticate as the admin."""

    def __init__(self, workdir: Path, run_id: str):
        self.passwords = {name: secrets.token_hex(16) for name in (*redis_acl.ROLES, ADMIN)}
        workdir.mkdir(parents=True, exist_ok=True)
        aclfile = workdir / "users.acl"
        aclfile.write_text("\n".join(acl_lines(self.passwords)) + "\n")
        super().__init__(
            workdir,
            run_id,
            extra_args=("--aclfile", str(aclfile)),
            credentials=f"{ADMIN}:{self.passwords[ADMIN]}@",
        )

    def url_as(self, user: str) -> str:
        """The server's URL with ``user``'s credentials (a role or ``admin``)."""
        return f"redis://{user}:{quote(self.passwords[user], safe='')}@127.0.0.1:{self.port}/0"

    def urls(self) -> dict[str, str]:
        return {user: self.url_as(user) for user in (*redis_acl.ROLES, ADMIN)}

    @property
    def anonymous_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def denials(self) -> list[str]:
        """What the server refused (``ACL LOG``), one line each: who, what, on which key."""
        client = redis.Redis.from_url(self.url, decode_responses=True)
        with client:
            entries = client.acl_log(count=1000)
        return [
            f"{e['username']}: {e['reason']} {e['object']} in {e['context']} "
            f"(from {e['client-info'].get('cmd')}, {e['count']}x)"
            for e in entries
        ]

    def append_denials(self, path: str) -> None:
        with open(path, "a", encoding="utf-8") as out:
            out.writelines(f"{line}\n" for line in self.denials())
