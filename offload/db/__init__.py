"""PostgreSQL: the source of truth for uploads and job status (Redis only dispatches)."""

from __future__ import annotations

import re

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_schema_name(schema: str) -> str:
    """The name, if it is one we put in SQL and libpq options unquoted; ValueError otherwise."""
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"schema name {schema!r} must match {_SCHEMA_NAME.pattern}")
    return schema


def schema_options(schema: str) -> str:
    """libpq ``options`` that pin the search_path, so every statement stays unqualified and a
    test run can use its own schema."""
    return f"-c search_path={check_schema_name(schema)}"
