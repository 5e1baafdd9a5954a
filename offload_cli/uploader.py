"""One file through the API: ``POST /uploads``, the bytes to S3 (transfer.py), ``complete``;
a multipart upload's resume state written right after it is created, so that re-running the
same upload of the same unchanged file sends only the parts S3 does not have yet."""

from __future__ import annotations

import mimetypes
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import urllib3

from offload_cli import transfer
from offload_cli.api import Api
from offload_cli.errors import ApiError, UsageError
from offload_cli.follow import PAST_PENDING_STATES
from offload_cli.state import FileIdentity, StateStore, UploadState

Note = Callable[[str], None]
ProgressFactory = Callable[[str, int, int], Any]  # (label, total bytes, bytes already there)


def check_file(path: Path, size: int | None = None) -> None:
    """Refuse, before any request, what the API would refuse anyway: a missing file, something
    that is not a regular file, and an empty file (the API takes 1 byte or more: an upload
    exists to start jobs on its bytes). ``size``: the size already read, if any."""
    try:
        if not path.is_file():
            raise UsageError(f"{path}: {'not a regular file' if path.exists() else 'no such file'}")
        if size is None:
            size = path.stat().st_size
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from exc
    if size == 0:
        raise UsageError(f"{path}: empty file: the API takes files of 1 byte or more; not sent")


def guess_content_type(path: Path) -> str:
    guessed, encoding = mimetypes.guess_type(path.name)
    if encoding or not guessed:  # e.g. .tar.gz is gzip bytes, not a tar: say nothing specific
        return "application/octet-stream"
    return guessed


@dataclass
class UploadOutcome:
    file: str
    upload: dict[str, Any]  # the API's view of the upload
    resumed_parts: int = 0  # parts S3 already had (a resumed upload)
    sent_parts: int = 0  # parts this run sent
    sent_bytes: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def upload_id(self) -> str:
        return str(self.upload["id"])


class ApiPartUrls:
    """Part URLs from ``POST /uploads/{id}/parts``."""

    def __init__(self, api: Api, upload_id: str, batch: int = 100):
        self.api = api
        self.upload_id = upload_id
        self.batch = batch

    def part_urls(self, numbers: list[int]) -> tuple[dict[int, str], float]:
        while True:
            try:
                answer = self.api.part_urls(self.upload_id, numbers[: self.batch])
                break
            except ApiError as exc:
                # The API hands out fewer URLs per call than we asked for: ask for fewer.
                if exc.status == 400 and exc.field == "partNumbers" and self.batch > 1:
                    self.batch = max(1, self.batch // 2)
                    continue
                raise
        return _urls(answer.get("partUrls", [])), _expiry(answer.get("expiresAt"))


def _urls(part_urls: list[dict[str, Any]]) -> dict[int, str]:
    return {int(p["partNumber"]): p["url"] for p in part_urls}


def _expiry(value: str | None) -> float:
    """``expiresAt`` as a ``time.time()``; unknown: assume the API's default 15 minutes."""
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return time.time() + 900


class Uploader:
    def __init__(
        self,
        api: Api,
        pool: urllib3.PoolManager,
        *,
        store: StateStore | None,
        parallel: int = transfer.DEFAULT_PARALLEL,
        tries: int = 5,
        rate: transfer.RateLimit | None = None,
        progress: ProgressFactory | None = None,
        note: Note | None = None,
    ):
        self.api = api
        self.pool = pool
        self.store = store
        self.parallel = parallel
        self.tries = tries
        self.rate = rate
        self.progress = progress
        self.note = note or (lambda message: None)
        self.cancel = threading.Event()

    def upload(
        self, path: Path, content_type: str | None = None, resume: bool = True
    ) -> UploadOutcome:
        try:
            identity = FileIdentity.of(path)
        except OSError as exc:
            raise UsageError(f"{path}: {exc.strerror or exc}") from exc
        check_file(path, identity.size)
        try:
            fd = os.open(identity.path, os.O_RDONLY)
        except OSError as exc:
            raise UsageError(f"{path}: {exc.strerror or exc}") from exc
        try:
            started = time.monotonic()
            outcome = None
            if resume and self.store:
                state = self.store.load(identity, self.api.api_url)
                if state:
                    outcome = self._resume(fd, path, identity, state)
            if outcome is None:
                outcome = self._fresh(fd, path, identity, content_type or guess_content_type(path))
            outcome.seconds = time.monotonic() - started
            return outcome
        finally:
            os.close(fd)

    # --- a new upload ---------------------------------------------------------------------

    def _fresh(
        self, fd: int, path: Path, identity: FileIdentity, content_type: str
    ) -> UploadOutcome:
        created = self.api.create_upload(path.name, identity.size, content_type)
        outcome = UploadOutcome(str(path), created)
        if created["type"] == "single":
            with self._bar(path, identity.size, 0) as bar:
                transfer.post_single(
                    pool=self.pool,
                    post=created["post"],
                    fd=fd,
                    size=identity.size,
                    filename=created.get("filename") or path.name,
                    content_type=created.get("contentType") or content_type,
                    tries=self.tries,
                    progress=bar,
                    rate=self.rate,
                    cancel=self.cancel,
                )
            outcome.sent_parts, outcome.sent_bytes = 1, identity.size
            return outcome
        part_size, part_count = int(created["partSize"]), int(created["partCount"])
        if self.store:
            self.store.save(
                UploadState(
                    upload_id=created["id"],
                    api_url=self.api.api_url,
                    path=identity.path,
                    size=identity.size,
                    mtime_ns=identity.mtime_ns,
                    part_size=part_size,
                    part_count=part_count,
                    key=created.get("key", ""),
                    content_type=created.get("contentType", content_type),
                )
            )
        first = created.get("partUrls", [])
        batch = len(first) if 0 < len(first) < part_count else 100
        source = ApiPartUrls(self.api, created["id"], batch)
        numbers = list(range(1, part_count + 1))
        urls = transfer.PartUrls(source, numbers)
        urls.seed(_urls(first), _expiry(created.get("expiresAt")))
        etags = self._send_parts(fd, path, identity, part_size, numbers, urls, {})
        outcome.sent_parts = len(numbers)
        outcome.sent_bytes = identity.size
        outcome.upload = self._complete(created, etags, identity)
        return outcome

    # --- resuming -------------------------------------------------------------------------

    def _resume(
        self, fd: int, path: Path, identity: FileIdentity, state: UploadState
    ) -> UploadOutcome | None:
        """Finish the upload ``state`` names; None when there is nothing left to resume (a
        new upload is needed)."""
        try:
            upload = self.api.get_upload(state.upload_id)
        except ApiError as exc:
            if exc.status != 404:
                raise
            self.note(f"{path}: upload {state.upload_id} no longer exists; starting a new one")
            self._forget(identity)
            return None
        # "completed": S3 has the object, its event is not processed yet (the row is pending).
        if upload["state"] in PAST_PENDING_STATES or upload.get("completed"):
            self.note(f"{path}: upload {state.upload_id} was already completed")
            self._forget(identity)
            return UploadOutcome(str(path), upload, resumed_parts=state.part_count)
        if upload["state"] != "pending" or not upload.get("multipartOpen"):
            self.note(
                f"{path}: upload {state.upload_id} cannot be resumed ({upload['state']}); "
                "starting a new one"
            )
            self._forget(identity)
            return None
        part_size, part_count = int(upload["partSize"]), int(upload["partCount"])
        held: dict[int, str] = {}
        for part in upload.get("uploadedParts", []):
            number = int(part["partNumber"])
            if 1 <= number <= part_count:
                _, length = transfer.part_range(number, part_size, identity.size)
                if int(part["size"]) == length:  # a part of the wrong size is sent again
                    held[number] = part["etag"]
        missing = [n for n in range(1, part_count + 1) if n not in held]
        self.note(
            f"{path}: resuming upload {upload['id']}: {len(held)} of {part_count} parts "
            f"already in S3, sending {len(missing)}"
        )
        urls = transfer.PartUrls(ApiPartUrls(self.api, upload["id"]), missing)
        already = sum(transfer.part_range(n, part_size, identity.size)[1] for n in held)
        etags = self._send_parts(fd, path, identity, part_size, missing, urls, held, already)
        outcome = UploadOutcome(str(path), upload, resumed_parts=len(held))
        outcome.sent_parts = len(missing)
        outcome.sent_bytes = identity.size - already
        outcome.upload = self._complete(upload, etags, identity)
        return outcome

    # --- shared ---------------------------------------------------------------------------

    def _send_parts(
        self,
        fd: int,
        path: Path,
        identity: FileIdentity,
        part_size: int,
        numbers: list[int],
        urls: transfer.PartUrls,
        held: dict[int, str],
        already: int = 0,
    ) -> dict[int, str]:
        with self._bar(path, identity.size, already) as bar:
            sent = transfer.put_parts(
                pool=self.pool,
                fd=fd,
                size=identity.size,
                part_size=part_size,
                numbers=numbers,
                urls=urls,
                parallel=self.parallel,
                tries=self.tries,
                progress=bar,
                rate=self.rate,
                cancel=self.cancel,
            )
        if os.stat(fd).st_mtime_ns != identity.mtime_ns:
            raise UsageError(f"{path}: the file changed while it was being uploaded")
        return {**held, **sent}

    def _complete(
        self, upload: dict[str, Any], etags: dict[int, str], identity: FileIdentity
    ) -> dict[str, Any]:
        parts = [{"partNumber": n, "etag": etags[n]} for n in sorted(etags)]
        try:
            done = self.api.complete(upload["id"], parts)
        except ApiError as exc:
            # A retried complete whose first try went through: it is done.
            if exc.status != 409 or "already completed" not in exc.api_message:
                raise
            done = self.api.get_upload(upload["id"])
        self._forget(identity)
        return done

    def _forget(self, identity: FileIdentity) -> None:
        if self.store:
            self.store.delete(identity, self.api.api_url)

    @contextmanager
    def _bar(self, path: Path, total: int, already: int) -> Iterator[Any]:
        """The file's progress bar (None without one), closed however the transfer ends."""
        bar = self.progress(path.name, total, already) if self.progress else None
        try:
            yield bar
        finally:
            if bar:
                bar.close()
