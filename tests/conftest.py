"""Shared fixtures: real Redis, real PostgreSQL, moto S3 in server mode.

Each test gets its own Redis key prefix and its own PostgreSQL schema, so tests never see each
other's data and can run against a shared server.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import boto3
import psycopg
import pytest
import redis
from psycopg.conninfo import make_conninfo

from offload_local.stack import delete_keys, drop_schema
from tests.support import servers, tiers

# hypothesis caches what it learns of the source (.hypothesis/constants) in the working
# directory unless told otherwise: outside the repository, under the system's temporary folder
# (tests/support/hypothesis_profiles.py keeps no example database at all).
os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "offload-hypothesis")
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--system-long",
        action="store_true",
        default=bool(os.environ.get("OFFLOAD_SYSTEM_LONG")),
        help="system tests (tests/system/) at full size with the shipped worker and reconciler "
        "settings (also OFFLOAD_SYSTEM_LONG=1); default: the short versions CI runs",
    )


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group markers it adds
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tiers.assign(items)


@pytest.fixture(autouse=True)
def _unit_tests_reach_no_server(request: pytest.FixtureRequest, monkeypatch) -> None:
    """A unit test that talks to Redis or PostgreSQL is misfiled: it fails here, not silently
    slows the fast tier."""
    if request.node.get_closest_marker("unit") is not None:
        monkeypatch.setenv("REDIS_URL", tiers.UNREACHABLE_REDIS_URL)
        monkeypatch.setenv("DATABASE_URL", tiers.UNREACHABLE_DATABASE_URL)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    with servers.moto_server() as endpoint:
        saved = {k: os.environ.get(k) for k in servers.aws_test_env(endpoint)}
        os.environ.update(servers.aws_test_env(endpoint))
        try:
            yield endpoint
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture
def s3(moto_endpoint: str):
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def sqs(moto_endpoint: str):
    return boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3) -> str:
    name = servers.unique_name("bkt").replace("_", "-")
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A redis-server of this run's own with the queue's ACL users (tests/support/redis_acl.py),
    default user off."""
    from tests.support.own_servers import new_run_id
    from tests.support.redis_acl import URLS_ENV, AclRedis

    server = AclRedis(tmp_path_factory.mktemp("acl-redis"), new_run_id())
    server.start()
    saved = os.environ.get(URLS_ENV)
    os.environ[URLS_ENV] = json.dumps(server.urls())  # tests/support/redis_acl.py: as_user
    try:
        yield server
    finally:
        if saved is None:
            os.environ.pop(URLS_ENV, None)
        else:
            os.environ[URLS_ENV] = saved
        if log_path := os.environ.get("OFFLOAD_TEST_REDIS_ACL_LOG"):
            server.append_denials(log_path)
        server.stop()


def _acl_role() -> str | None:
    """``OFFLOAD_TEST_REDIS_ACL=1`` (scripts/test_redis_acl.sh): every test that uses Redis
    talks to the ACL'd server, as the producer (as the Lambdas do; or as the role named
    instead of 1), the workers it starts as the worker, its own clean-up as the admin."""
    value = os.environ.get("OFFLOAD_TEST_REDIS_ACL")
    return "producer" if value == "1" else value or None


@pytest.fixture
def redis_admin_url(request: pytest.FixtureRequest) -> str:
    """A URL allowed every command: the shared Redis, or the ACL'd server's admin."""
    if _acl_role():
        return str(request.getfixturevalue("acl_redis").url)
    return servers.redis_url()


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, redis_admin_url: str) -> str:
    role = _acl_role()
    url = request.getfixturevalue("acl_redis").url_as(role) if role else redis_admin_url
    redis.Redis.from_url(url).ping()
    return url


@pytest.fixture
def queue_prefix(redis_url: str, redis_admin_url: str) -> Iterator[str]:
    """A hash-tagged prefix of this test's own; its keys are deleted afterwards."""
    prefix = "{" + servers.unique_name("test") + "}"
    yield prefix
    delete_keys(redis_admin_url, prefix)


@pytest.fixture
def database_url() -> str:
    return servers.database_url()


@pytest.fixture
def pg_schema(database_url: str) -> Iterator[str]:
    with servers.pg_schema(database_url) as schema:
        yield schema


@pytest.fixture
def settings(redis_url: str, database_url: str, pg_schema: str, queue_prefix: str):
    from tests.support.harness import test_settings

    return test_settings(redis_url, database_url, pg_schema, queue_prefix)


@pytest.fixture
def bus(moto_endpoint: str):
    """A moto EventBridge bus of this test's, whose events a rule copies to an SQS queue."""
    from tests.support.eventbridge import subscribe

    return subscribe(moto_endpoint)


@pytest.fixture
def pipeline_settings(settings, moto_endpoint: str, bus):
    """A worker's settings for running pipelines: moto S3 for result.json, the test's bus for
    the upload events."""
    return replace(
        settings,
        s3_endpoint_url=moto_endpoint,
        events_endpoint_url=moto_endpoint,
        event_bus_name=bus.bus_name,
    )


# The database role a module's Lambda handlers log in as (offload.db.roles), as deployed: the
# API's, enqueue's and reconciler's tests then prove their grants suffice. Other modules
# (several handlers per test) keep the schema owner's login.
LAMBDA_ROLE_BY_MODULE = {
    "test_api_isolation": "api",
    "test_api_jobs": "api",
    "test_api_outages": "api",
    "test_api_requested_jobs": "api",
    "test_api_pipelines": "api",
    "test_api_requests": "api",
    "test_api_retry": "api",
    "test_api_flow_retries": "api",
    "test_api_uploads": "api",
    "test_enqueue": "enqueue",
    "test_scheduled": "reconciler",
    "test_flows_reconcile": "reconciler",
}


@pytest.fixture
def lambda_env(settings, moto_endpoint, bucket, monkeypatch, request):
    """Environment of a Lambda container for handler tests: this test's Redis prefix and
    schema, the moto endpoints, Powertools without X-Ray; the container state is reset
    before and after, as on a cold start. Parts of 5 MiB (S3's smallest, not the 16 MiB
    default), so that multipart tests get several parts from a few MiB of data. The
    database login is the module's component role (LAMBDA_ROLE_BY_MODULE)."""
    from lambdas import runtime
    from tests.support.harness import as_component

    component = LAMBDA_ROLE_BY_MODULE.get(request.module.__name__.rsplit(".", 1)[-1])
    login = as_component(settings, component) if component else settings
    env = {
        "REDIS_URL": settings.redis_url,
        "DATABASE_URL": login.database_url,
        "OFFLOAD_DB_SCHEMA": settings.database_schema,
        "OFFLOAD_QUEUE_PREFIX": settings.queue_prefix,
        "OFFLOAD_QUEUE_NAME": settings.queue_name,
        "UPLOAD_BUCKET": bucket,
        "OFFLOAD_PART_SIZE_MIB": "5",
        "S3_ENDPOINT_URL": moto_endpoint,
        "POWERTOOLS_TRACE_DISABLED": "1",
        "POWERTOOLS_SERVICE_NAME": "offload-test",
        "POWERTOOLS_METRICS_NAMESPACE": "OffloadTest",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runtime.reset()
    yield env
    runtime.reset()


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory):
    """The whole pipeline (python -m offload_local) on this test session's own schema, queue
    prefix and work directory; logs under its workdir/logs when a test fails."""
    from tests.support.local_stack import LocalStack, start_options

    workdir = tmp_path_factory.mktemp("local-stack")
    with LocalStack(start_options(workdir)) as stack:
        yield stack
    drop_schema(stack.info.database_url, stack.options.schema)
    delete_keys(stack.info.redis_url, stack.options.queue_prefix)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on the test item (``rep_call``), for fixtures that keep evidence of
    a failure (the browser test's screenshot)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def app_role(database_url):
    """(URL that logs in as a new role, role name): a login role of the test's own on the real
    server, so role-level settings touch nothing else; dropped with all it owns."""
    role = servers.unique_name("role")
    password = secrets.token_hex(16)
    with psycopg.connect(database_url, autocommit=True) as conn:
        database = conn.execute("SELECT current_database()").fetchone()[0]
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        with conn.transaction():
            _lock_database_acl(conn)
            conn.execute(f'GRANT CREATE ON DATABASE "{database}" TO {role}')
    try:
        yield make_conninfo(database_url, user=role, password=password), role
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
            _lock_database_acl(conn)
            conn.execute(f"DROP OWNED BY {role} CASCADE")  # its schema, tables, grants
            conn.execute(f"DROP ROLE {role}")


def _lock_database_acl(conn: psycopg.Connection) -> None:
    """Grants on the database rewrite its one catalog row: two at once (parallel tests, each
    with a role of its own) fail with "tuple concurrently updated". One at a time, then."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('offload-tests:database-acl'))")


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """The system tests' figures (tests/system/conftest.py), in a section of their own. Here,
    not beside them: under pytest-xdist the controller collects nothing, so it never loads
    tests/system/conftest.py."""
    from tests.support.system_stack import FIGURES_PROPERTY

    recorded = sorted(
        (report.nodeid.rsplit("::", 1)[-1], text)
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, text in getattr(report, "user_properties", ())
        if name == FIGURES_PROPERTY
    )
    if recorded:
        terminalreporter.section("system figures")
        for name, text in recorded:
            terminalreporter.write_line(f"{name}: {text}")
