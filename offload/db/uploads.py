"""Upload rows in PostgreSQL: created when the API hands out URLs, advanced by the S3 event.

Every read and every change a user can cause is scoped by ``owner`` (the Cognito ``sub``), so
one user's request can never see or change another user's upload; the enqueue path, which acts
for the system, addresses rows by id and key instead.

States: ``pending`` (URLs handed out) -> ``uploaded`` (object seen, size checked) -> ``queued``
(its flow started) -> ``processed`` / ``failed`` (the flow ended: ``offload.db.upload_outcomes``,
written by the worker); or ``rejected`` (object does not match what was announced) /
``aborted``.

A row in ``uploaded``/``queued`` names one object: its version id and ETag (its *revision*, the
same one its jobs' ids are derived from). A presigned POST stays valid for the URL's lifetime,
so the key can get a newer version: the row then moves to that version (back to ``uploaded``,
see :meth:`UploadStore.mark_uploaded`). Every change of a row that names an object is guarded
by the object it names, so two deliveries racing on one row can never leave it naming an
object the winner did not decide on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from offload.db.pool import until_stored
from offload.flows import HOLDING_STATES
from offload.pages import DEFAULT_LIMIT, Cursor, owner_page
from offload.quotas import OpenUpload, Usage

if TYPE_CHECKING:
    from offload.quotas import QuotaCheck


@dataclass(frozen=True)
class Upload:
    id: str
    owner: str
    bucket: str
    key: str
    filename: str
    content_type: str | None
    size_announced: int | None
    size_actual: int | None
    etag: str | None
    version_id: str | None
    multipart_upload_id: str | None
    state: str
    error: str | None
    created_at: datetime
    updated_at: datetime
    # A multipart upload's part size, chosen when it was created (migration 0002). None for a
    # single upload, and for multipart uploads created before the column existed.
    part_size: int | None = None
    # When the last part URLs handed out for a multipart upload expire (migration 0003): the
    # latest signing wins, and a complete pushes it forward too. None for single uploads and
    # for multipart uploads from before the column existed. The reconciler aborts a pending
    # upload only once this lies a grace period in the past (offload.expired_uploads).
    part_urls_expire_at: datetime | None = None
    # The upload's final state (migration 0004, written by the pipeline's finalize): the step
    # that failed for good (``failed``), the key of its result.json (``processed``), and when
    # it reached a final state. None before then, and for rows from before pipelines.
    failed_step: str | None = None
    result_key: str | None = None
    finished_at: datetime | None = None
    # The content type the enqueue path sniffed from the object's first bytes, which picked the
    # upload's pipeline (migration 0004); None until then, and for uploads from before
    # pipelines, whose jobs ran without a finalize step.
    detected_type: str | None = None
    # The creator's tier (offload.caller.Tier) when the upload was created (migration 0004):
    # the enqueue path sees only the object's key, and the upload keeps the priority it was
    # granted. None for rows from before the column (offload.priorities: standard).
    tier: str | None = None

    @property
    def revision(self) -> str:
        """The revision of the object the row names, as its jobs carry it
        (:attr:`offload.jobs.JobRef.revision`): the version id, else the unquoted ETag."""
        return self.version_id or (self.etag or "").strip('"')


def revision_sql(table: str) -> str:
    """:attr:`Upload.revision` in SQL, for the uploads row ``table`` (an alias): compared with
    ``jobs.revision`` to tell a job of the row's object from one of an older version."""
    return f"COALESCE(NULLIF({table}.version_id, ''), btrim(COALESCE({table}.etag, ''), '\"'))"


_COLUMNS = (
    "id, owner, bucket, key, filename, content_type, size_announced, size_actual, etag,"
    " version_id, multipart_upload_id, state, error, created_at, updated_at, part_size,"
    " part_urls_expire_at, failed_step, result_key, finished_at, detected_type, tier"
)
# What a row naming a new object forgets of the previous one (its sniffed type, its outcome).
_NEW_OBJECT = {"detected_type": None, "failed_step": None, "result_key": None, "finished_at": None}


def quota_lock_key(owner: str) -> int:
    """The per-owner advisory lock key (a signed 64-bit int, as PostgreSQL takes it) that
    serialises an owner's quota checks: their uploads' count and insert happen under it. A
    collision with another owner only makes the two wait for each other."""
    digest = hashlib.blake2b(f"offload-upload-quota:{owner}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def _usage(conn: AsyncConnection[Any], owner: str, check: QuotaCheck) -> Usage:
    """What ``owner`` has open, and the upload filling their hourly window (offload.quotas):
    bounded reads over the (owner, created_at) index."""
    params = {
        "owner": owner,
        "single": check.single_open_s,
        "multi": check.multipart_open_s,
        "longest": max(check.single_open_s, check.multipart_open_s),
        "nth": max(check.quota.uploads_per_hour - 1, 0),
    }
    hourly = (
        "(SELECT created_at FROM uploads WHERE owner = %(owner)s"
        " AND created_at > now() - interval '1 hour'"
        " ORDER BY created_at DESC OFFSET %(nth)s LIMIT 1)"
        if check.quota.uploads_per_hour
        else "NULL::timestamptz"
    )
    cursor = await conn.execute(f"SELECT now(), {hourly}", params)
    row = await cursor.fetchone()
    assert row is not None
    now, hour_filled_by = row
    if not (check.quota.open_uploads or check.quota.bytes_in_flight):
        return Usage(now=now, open=(), hour_filled_by=hour_filled_by)
    cursor = await conn.execute(
        "SELECT size, expires_at FROM ("
        " SELECT COALESCE(size_announced, 0) AS size, created_at + interval '1 second'"
        " * CASE WHEN multipart_upload_id IS NULL THEN %(single)s ELSE %(multi)s END"
        " AS expires_at FROM uploads WHERE owner = %(owner)s AND state = 'pending'"
        " AND created_at > now() - interval '1 second' * %(longest)s) AS pending"
        " WHERE expires_at > now()",
        params,
    )
    open_uploads = tuple(
        OpenUpload(size, expires_at) for size, expires_at in await cursor.fetchall()
    )
    return Usage(now=now, open=open_uploads, hour_filled_by=hour_filled_by)


class UploadStore:
    def __init__(self, pool: AsyncConnectionPool):
        self._pool = pool

    async def _fetch_one(self, statement: str, params: dict[str, Any]) -> Upload | None:
        async with self._pool.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(Upload))
            await cursor.execute(statement, params)
            return await cursor.fetchone()

    async def create(
        self,
        *,
        upload_id: str,
        owner: str,
        bucket: str,
        key: str,
        filename: str,
        content_type: str,
        size_announced: int,
        multipart_upload_id: str | None = None,
        part_size: int | None = None,
        part_urls_expire_at: datetime | None = None,
        quota: QuotaCheck | None = None,
        tier: str | None = None,
    ) -> Upload:
        """Insert a ``pending`` row. With ``quota``, the owner's usage is read and checked
        (raising ``QuotaExceeded``) and the row inserted in one transaction, under the owner's
        advisory lock: concurrent creates of one owner are serialised there, so they cannot
        both take the last slot (a plain count-then-insert would let both see it free). It
        relies on READ COMMITTED (PostgreSQL's default): each statement after the lock sees the
        rows its predecessor under the lock committed."""
        statement = (
            f"INSERT INTO uploads (id, owner, bucket, key, filename, content_type,"
            f" size_announced, multipart_upload_id, part_size, part_urls_expire_at, tier)"
            f" VALUES (%(id)s, %(owner)s, %(bucket)s, %(key)s, %(filename)s, %(content_type)s,"
            f" %(size)s, %(mpu)s, %(part_size)s, %(urls_expire)s, %(tier)s)"
            f" RETURNING {_COLUMNS}"
        )
        params = {
            "id": upload_id,
            "owner": owner,
            "bucket": bucket,
            "key": key,
            "filename": filename,
            "content_type": content_type,
            "size": size_announced,
            "mpu": multipart_upload_id,
            "part_size": part_size,
            "urls_expire": part_urls_expire_at,
            "tier": tier,
        }
        async with self._pool.connection() as conn, conn.transaction():
            if quota is not None:
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (quota_lock_key(owner),))
                quota.admit(await _usage(conn, owner, quota))
            cursor = conn.cursor(row_factory=class_row(Upload))
            await cursor.execute(statement, params)
            row = await cursor.fetchone()
        assert row is not None
        return row

    async def usage(self, owner: str, quota: QuotaCheck) -> Usage:
        """The owner's usage, read without the lock: a cheap early refusal before work that
        costs more (creating the S3 multipart upload); ``create`` checks again under it."""
        async with self._pool.connection() as conn:
            return await _usage(conn, owner, quota)

    async def get_for_owner(self, upload_id: str, owner: str) -> Upload | None:
        """The caller's upload, or None: absent and foreign look the same (no id probing)."""
        return await self._fetch_one(
            f"SELECT {_COLUMNS} FROM uploads WHERE id = %(id)s AND owner = %(owner)s",
            {"id": upload_id, "owner": owner},
        )

    async def list_for_owner(
        self,
        owner: str,
        limit: int = DEFAULT_LIMIT,
        after: Cursor | None = None,
        state: str | None = None,
    ) -> tuple[list[Upload], Cursor | None]:
        """One page of the owner's uploads (only those in ``state`` when given), newest first,
        and the cursor of the next page (None on the last page): the ``uploads_owner_created``
        index serves the order, as ``jobs_owner_created`` does for the jobs."""
        return await owner_page(
            self._pool, Upload, "uploads", _COLUMNS, owner, limit, after, {"state": state}
        )

    async def get(self, upload_id: str) -> Upload | None:
        return await self._fetch_one(
            f"SELECT {_COLUMNS} FROM uploads WHERE id = %(id)s", {"id": upload_id}
        )

    async def _transition(
        self,
        upload_id: str,
        to_state: str,
        from_states: tuple[str, ...],
        *,
        holding: Upload | None = None,
        **fields: Any,
    ) -> Upload | None:
        """Move the row to ``to_state`` if it is in one of ``from_states`` (and, given
        ``holding``, still names that row's object); None otherwise. Retried until PostgreSQL
        answers: these record facts about objects in S3."""
        assignments = "".join(f", {name} = %({name})s" for name in fields)
        guard = ""
        params = {"id": upload_id, "to": to_state, "from": list(from_states), **fields}
        if holding is not None:
            guard = (
                " AND version_id IS NOT DISTINCT FROM %(held_version_id)s"
                " AND etag IS NOT DISTINCT FROM %(held_etag)s"
            )
            params |= {"held_version_id": holding.version_id, "held_etag": holding.etag}
        statement = (
            f"UPDATE uploads SET state = %(to)s, updated_at = now(){assignments}"
            f" WHERE id = %(id)s AND state = ANY(%(from)s){guard} RETURNING {_COLUMNS}"
        )
        return await until_stored(
            f"upload {to_state}", upload_id, lambda: self._fetch_one(statement, params)
        )

    async def mark_uploaded(
        self,
        upload_id: str,
        *,
        size_actual: int,
        etag: str | None,
        version_id: str | None,
        replacing: Upload | None = None,
    ) -> Upload | None:
        """The object arrived (from ``pending``), or a newer version of it replaces the one
        ``replacing`` names (from ``uploaded``/``queued``, only while the row still names
        that one). None when the row is no longer what the caller saw."""
        from_states = HOLDING_STATES if replacing else ("pending",)
        return await self._transition(
            upload_id,
            "uploaded",
            from_states,
            holding=replacing,
            size_actual=size_actual,
            etag=etag,
            version_id=version_id,
            error=None,
            **_NEW_OBJECT,
        )

    async def accept_first_object(
        self,
        upload_id: str,
        *,
        owner: str,
        bucket: str,
        key: str,
        size: int,
        etag: str | None,
        version_id: str | None,
    ) -> Upload | None:
        """The enqueue path's common case in one statement: a ``pending`` row, with this key and
        owner, whose object arrived with the announced size, moves to ``uploaded``. None for
        anything else (no such row, another key or owner, not pending, another size): the
        caller then reads the row and decides (``mark_uploaded``, ``mark_rejected``)."""
        statement = (
            "UPDATE uploads SET state = 'uploaded', size_actual = %(size)s, etag = %(etag)s,"
            " version_id = %(version_id)s, error = NULL, updated_at = now()"
            " WHERE id = %(id)s AND state = 'pending' AND owner = %(owner)s"
            " AND bucket = %(bucket)s AND key = %(key)s"
            " AND (size_announced IS NULL OR size_announced = %(size)s)"
            f" RETURNING {_COLUMNS}"
        )
        params = {
            "id": upload_id,
            "owner": owner,
            "bucket": bucket,
            "key": key,
            "size": size,
            "etag": etag,
            "version_id": version_id,
        }
        return await until_stored(
            "upload uploaded", upload_id, lambda: self._fetch_one(statement, params)
        )

    async def mark_queued(
        self, upload: Upload, *, detected_type: str | None = None
    ) -> Upload | None:
        """The flow of ``upload``'s object is started (its pipeline picked by
        ``detected_type``, stored when given); None when the row has moved to another object
        meanwhile (that object's jobs are not), or its flow already ended (a fast flow's
        ``finalize`` may land before this)."""
        fields = {"detected_type": detected_type} if detected_type is not None else {}
        return await self._transition(
            upload.id, "queued", ("uploaded", "queued"), holding=upload, **fields
        )

    async def mark_rejected(
        self,
        upload_id: str,
        reason: str,
        *,
        size_actual: int | None = None,
        etag: str | None = None,
        version_id: str | None = None,
        replacing: Upload | None = None,
    ) -> Upload | None:
        """The object does not match what was announced: from ``pending``, or, for a newer
        version, from the ``uploaded``/``queued`` row still naming ``replacing``. The row
        names the rejected object from then on."""
        from_states = HOLDING_STATES if replacing else ("pending", "rejected")
        return await self._transition(
            upload_id,
            "rejected",
            from_states,
            holding=replacing,
            error=reason,
            size_actual=size_actual,
            etag=etag,
            version_id=version_id,
            **_NEW_OBJECT,
        )

    async def mark_aborted(self, upload_id: str) -> Upload | None:
        return await self._transition(upload_id, "aborted", ("pending",))

    async def extend_part_urls(
        self, upload_id: str, owner: str, expire_at: datetime
    ) -> Upload | None:
        """Record that URLs valid until ``expire_at`` are handed out for the caller's pending
        multipart upload (or that a complete is under way), *before* they exist: the latest
        expiry wins. None when the row is no longer pending, e.g. the reconciler aborted it
        as expired in between: the caller then hands nothing out. Both this and the
        reconciler's :meth:`expire` are conditional UPDATEs of the one row, so PostgreSQL
        orders them: either the reconciler sees the new expiry and leaves the upload alone,
        or this sees ``aborted``."""
        return await self._fetch_one(
            "UPDATE uploads SET part_urls_expire_at = GREATEST(part_urls_expire_at, %(at)s)"
            " WHERE id = %(id)s AND owner = %(owner)s AND state = 'pending'"
            f" AND multipart_upload_id IS NOT NULL RETURNING {_COLUMNS}",
            {"id": upload_id, "owner": owner, "at": expire_at},
        )

    async def expired(self, grace_s: int, limit: int) -> list[Upload]:
        """Pending multipart uploads whose latest part URLs expired more than ``grace_s``
        seconds ago, oldest expiry first, at most ``limit``. Pending rows are few (uploads in
        flight) and the (state, updated_at) index narrows to them; aborted rows leave the set,
        so a caller needs no cursor."""
        async with self._pool.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(Upload))
            await cursor.execute(
                f"SELECT {_COLUMNS} FROM uploads"
                " WHERE state = 'pending' AND multipart_upload_id IS NOT NULL"
                " AND part_urls_expire_at < now() - make_interval(secs => %(grace_s)s)"
                " ORDER BY part_urls_expire_at, id LIMIT %(limit)s",
                {"grace_s": grace_s, "limit": limit},
            )
            return await cursor.fetchall()

    async def expire(self, upload_id: str, grace_s: int, reason: str) -> Upload | None:
        """``pending`` -> ``aborted`` (``error`` = ``reason``) if the multipart upload's last
        part URLs expired more than ``grace_s`` seconds ago, judged by PostgreSQL's clock at
        the moment of the UPDATE; None otherwise (URLs re-signed or a complete started
        meanwhile, completed, aborted). Tried once: the reconciler's next run tries again."""
        return await self._fetch_one(
            "UPDATE uploads SET state = 'aborted', error = %(reason)s, updated_at = now()"
            " WHERE id = %(id)s AND state = 'pending' AND multipart_upload_id IS NOT NULL"
            " AND part_urls_expire_at < now() - make_interval(secs => %(grace_s)s)"
            f" RETURNING {_COLUMNS}",
            {"id": upload_id, "grace_s": grace_s, "reason": reason},
        )
