"""The deploy-time migrations custom resource handler against real PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from lambdas import migrate as migrate_handler
from lambdas import runtime
from offload.db.migrate import discover
from tests.support.servers import unique_name


@pytest.fixture
def schema(database_url, monkeypatch):
    name = unique_name("cr")
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("OFFLOAD_DB_SCHEMA", name)
    runtime.reset()
    yield name
    runtime.reset()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def test_create_update_delete(schema):
    created = migrate_handler.handler({"RequestType": "Create"}, None)
    assert created["PhysicalResourceId"] == f"offload-schema-{schema}"
    assert created["Data"]["Applied"] == ",".join(str(m.version) for m in discover())
    updated = migrate_handler.handler(
        {"RequestType": "Update", "PhysicalResourceId": created["PhysicalResourceId"]}, None
    )
    assert updated["Data"]["Applied"] == "none"
    deleted = migrate_handler.handler(
        {"RequestType": "Delete", "PhysicalResourceId": created["PhysicalResourceId"]}, None
    )
    assert deleted == {"PhysicalResourceId": created["PhysicalResourceId"]}


def test_schema_from_resource_properties(schema):
    other = schema + "_p"
    try:
        result = migrate_handler.handler(
            {"RequestType": "Create", "ResourceProperties": {"Schema": other}}, None
        )
        assert result["PhysicalResourceId"] == f"offload-schema-{other}"
    finally:
        with psycopg.connect(runtime.settings().database_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{other}" CASCADE')


def test_the_deploy_makes_the_components_roles(schema, database_url, monkeypatch):
    """As the stack runs it (OFFLOAD_DB_ROLE_PREFIX): the runtime's roles exist after the
    deploy's migration step, with the schema as their search_path."""
    from offload.db.roles import drop_roles, role_names

    monkeypatch.setenv("OFFLOAD_DB_ROLE_PREFIX", schema)
    names = role_names(schema)
    try:
        migrate_handler.handler({"RequestType": "Create"}, None)
        for name in names.values():
            with psycopg.connect(make_conninfo(database_url, user=name)) as conn:
                assert conn.execute("SELECT current_schema()").fetchone()[0] == schema
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            drop_roles(conn, names.values())
