"""The suite's tiers, assigned at collection (docs/testing.md):

- ``unit``: no server at all; a test here that reaches Redis or PostgreSQL fails, because the
  tier points both URLs at a closed port (a misfiled test cannot hide in the fast tier);
- ``integration``: real Redis, PostgreSQL and moto servers, with the worker or the handlers in
  process or as their own processes;
- ``e2e``: the whole local stack (``python -m offload_local``), the browser, the system tests;
- ``infra``: the CDK app synthesised with cdk-nag, cfn-lint, the dependency locks.

A test's tier comes from where it lives and which fixtures it uses, so a new test lands in the
right tier without anyone remembering a marker; a module or test that needs another tier says
so with ``pytestmark = pytest.mark.<tier>``, which wins. A test that takes 5 s or more is
marked ``slow`` where it is written.

Under pytest-xdist, tests that share an expensive session fixture (the local stack, the
synthesised CDK apps) run in one xdist group, so that fixture is built once per run rather than
once per worker; and the ``slow`` tests and long groups start first, then the tiers in ``ORDER``,
so that no long test starts while the others are finishing (``--dist loadgroup
--no-loadscope-reorder`` keeps this order: scripts/test.sh).
"""

from __future__ import annotations

from pathlib import Path

import pytest

TIERS = ("unit", "integration", "e2e", "infra")
# Run order under xdist: the long tiers first, the many short unit tests fill in at the end.
ORDER = ("e2e", "infra", "integration", "unit")

# Fixtures that reach a real server: a test that uses any of them (directly or through another
# fixture) is at least an integration test.
SERVER_FIXTURES = frozenset({"redis_url", "database_url", "moto_endpoint", "acl_redis"})
# Fixtures that start the whole stack or a browser.
E2E_FIXTURES = frozenset({"local_stack", "system"})

# Session fixtures too expensive to build once per xdist worker: their users share a group.
SHARED_SESSION_GROUPS = {
    "local_stack": "local-stack",
    "dev": "cdk-app",  # tests/infra/conftest.py: the synthesised apps
    "prod": "cdk-app",
    "each_env": "cdk-app",
    "tls_postgres": "tls-postgres",  # tests/test_database_tls.py: a TLS cluster of its own
}
# Groups whose tests add up to a minute or more on one worker: started with the slow tests.
LONG_GROUPS = frozenset({"local-stack"})

TESTS = Path(__file__).resolve().parent.parent
UNREACHABLE_REDIS_URL = "redis://127.0.0.1:9/0"
UNREACHABLE_DATABASE_URL = "postgresql://postgres@127.0.0.1:9/test?connect_timeout=1"


def tier_of(item: pytest.Item) -> str:
    explicit = [name for name in TIERS if item.get_closest_marker(name) is not None]
    if len(explicit) > 1:
        raise pytest.UsageError(f"{item.nodeid}: more than one tier marker {explicit}")
    if explicit:
        return explicit[0]
    folder = _folder(item)
    if folder == "infra":
        return "infra"
    if folder == "system":
        return "e2e"
    fixtures = set(getattr(item, "fixturenames", ()))
    if fixtures & E2E_FIXTURES:
        return "e2e"
    if fixtures & SERVER_FIXTURES:
        return "integration"
    return "unit"


def _folder(item: pytest.Item) -> str:
    """The item's first path part under tests/: a folder ("infra", "system") or its file."""
    return Path(str(item.path)).resolve().relative_to(TESTS).parts[0]


def xdist_group_of(item: pytest.Item) -> str | None:
    fixtures = set(getattr(item, "fixturenames", ()))
    for fixture, group in SHARED_SESSION_GROUPS.items():
        if fixture in fixtures:
            return group
    return None


def assign(items: list[pytest.Item]) -> None:
    """Marks every item with its tier (and its xdist group), and orders the items: the slow
    ones and the long groups first, then by tier."""
    order: dict[str, tuple[bool, int]] = {}
    for item in items:
        tier = tier_of(item)
        if item.get_closest_marker(tier) is None:
            item.add_marker(getattr(pytest.mark, tier))
        if _folder(item) == "system":
            item.add_marker(pytest.mark.slow)  # every system test runs a stack for 10 s or more
        group = xdist_group_of(item)
        if group is not None and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group))
        starts_first = item.get_closest_marker("slow") is not None or group in LONG_GROUPS
        order[item.nodeid] = (not starts_first, ORDER.index(tier))
    items.sort(key=lambda item: order[item.nodeid])  # stable: within a tier, the files' order
