"""Keyset pagination of the caller's lists (``GET /jobs``, ``GET /uploads``): the page size and
the opaque cursor, checked before any query.

Both lists are newest first, ordered by (created_at DESC, id ASC), which each table's
``(owner, created_at DESC, id)`` index serves directly; the cursor is the position of the last
row returned, so pages never repeat or skip a row however many are added meanwhile. A cursor is
only a position: whatever it holds, the owner filter of the query stays (a cursor of one list
used on the other, or a forged one, reaches nothing new).

Imports neither psycopg nor boto3: the upload routes use it before the job queries are loaded.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_CURSOR_CHARS = 512
# What a row id in a cursor can be: a job id (bullmq ids we make: offload/jobs.py) or an upload
# id (url-safe base64); anything else names no row, and a NUL in it would reach PostgreSQL,
# whose text refuses it. Always fullmatch: `$` would let a final newline through.
ROW_ID = re.compile(r"[A-Za-z0-9_.-]{1,200}")
_LIMIT = re.compile(r"[0-9]{1,4}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidCursor(ValueError):
    """A cursor this API did not hand out (or one that was tampered with)."""


@dataclass(frozen=True)
class Cursor:
    """The position after the row created at ``created_at`` with id ``row_id``."""

    created_at: datetime
    row_id: str


def encode_cursor(cursor: Cursor) -> str:
    """Opaque to clients: url-safe base64 of ``{"t": <µs since epoch>, "i": <row id>}``.
    Microseconds (PostgreSQL's precision, as an integer) so the position is exact."""
    micros = (cursor.created_at - _EPOCH) // timedelta(microseconds=1)
    raw = json.dumps({"t": micros, "i": cursor.row_id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(token: str) -> Cursor:
    if not token or len(token) > MAX_CURSOR_CHARS:
        raise InvalidCursor("cursor is not valid")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        fields = json.loads(raw)
        micros, row_id = fields["t"], fields["i"]
        if isinstance(micros, bool) or not isinstance(micros, int) or not isinstance(row_id, str):
            raise TypeError
        if not ROW_ID.fullmatch(row_id):
            raise ValueError("not a row id")
        return Cursor(_EPOCH + timedelta(microseconds=micros), row_id)
    except (binascii.Error, ValueError, TypeError, KeyError, OverflowError, RecursionError) as exc:
        raise InvalidCursor("cursor is not valid") from exc


def parse_list_params(limit: str | None, cursor: str | None) -> tuple[int, Cursor | None]:
    """A list route's query string (absent parameters are None) as a page size and the
    position to start after; InvalidRequest (400, ``field`` = the parameter) otherwise."""
    from offload.uploads import InvalidRequest  # that module imports this one's users

    size = DEFAULT_LIMIT
    if limit is not None:
        if not _LIMIT.fullmatch(limit) or not 1 <= int(limit) <= MAX_LIMIT:
            raise InvalidRequest(f"limit must be an integer within 1..{MAX_LIMIT}", field="limit")
        size = int(limit)
    after = None
    if cursor is not None:
        try:
            after = decode_cursor(cursor)
        except InvalidCursor as exc:
            raise InvalidRequest(str(exc), field="cursor") from exc
    return size, after


def after_clause(after: Cursor | None) -> tuple[str, dict[str, Any]]:
    """The SQL condition (`` AND ...``, or nothing) and its parameters that start a page of a
    (created_at DESC, id ASC) list after ``after``."""
    if after is None:
        return "", {}
    return (
        " AND (created_at < %(at)s OR (created_at = %(at)s AND id > %(after_id)s))",
        {"at": after.created_at, "after_id": after.row_id},
    )


def check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be within 1..{MAX_LIMIT}")


class _Listed(Protocol):
    """What a listed row has for its cursor."""

    @property
    def id(self) -> str: ...

    @property
    def created_at(self) -> datetime: ...


Row = TypeVar("Row", bound=_Listed)


async def owner_page(
    pool: AsyncConnectionPool,
    row_type: type[Row],
    table: str,
    columns: str,
    owner: str,
    limit: int,
    after: Cursor | None,
    filters: Mapping[str, Any],
) -> tuple[list[Row], Cursor | None]:
    """One page of the owner's rows of ``table`` (``uploads`` or ``jobs``: both are indexed on
    ``(owner, created_at DESC, id)``), newest first, and the cursor of the next page (None on
    the last page). ``filters`` maps a column to the value it must equal (None: no filter);
    ``table``, ``columns`` and the filters' columns are ours, never a caller's."""
    from psycopg.rows import class_row

    check_limit(limit)
    position, params = after_clause(after)
    params |= {"owner": owner, "limit": limit + 1}
    for column, value in filters.items():
        if value is not None:
            position += f" AND {column} = %({column})s"
            params[column] = value
    async with pool.connection() as conn:
        cursor = conn.cursor(row_factory=class_row(row_type))
        await cursor.execute(
            f"SELECT {columns} FROM {table} WHERE owner = %(owner)s{position}"
            " ORDER BY created_at DESC, id ASC LIMIT %(limit)s",
            params,
        )
        rows = await cursor.fetchall()
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, Cursor(rows[-1].created_at, rows[-1].id)
