"""The transfer engine: bytes from a local file straight to S3 through presigned URLs.

- ``put_parts``: a multipart upload's parts, ``parallel`` at a time, each read with
  ``os.pread`` when its turn comes (memory: about ``parallel`` parts), sent by urllib3, retried
  with backoff and a fresh URL (``tries`` attempts), ETags collected. Part URLs come from a
  :class:`PartUrlSource` (the API, or boto3 in the benchmark), batch by batch, and are replaced
  before they expire.
- ``post_single``: a presigned POST (``multipart/form-data``, every policy field, the file
  last), streamed from the file.

No API here: the caller decides what the parts are and completes the upload.
"""

from __future__ import annotations

import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import urllib3

from offload_cli.api import backoff_s
from offload_cli.errors import TransferError

MiB = 1 << 20
# Parts in flight by default: 4 x 16 MiB keeps a fast link busy (rclone's default is 4 too);
# more threads mostly contend for the same link and, against a local server, the same CPUs.
DEFAULT_PARALLEL = 4
CHUNK = MiB  # bytes per socket write: progress and rate limiting granularity
URL_MARGIN_S = 60.0  # a URL this close to its expiry is replaced before use
RETRY_STATUSES = {0, 403, 408, 429, 500, 502, 503, 504}  # 403: an expired URL, among others
PART_TIMEOUT = urllib3.Timeout(connect=10, read=120)


class Cancelled(Exception):
    """The transfer was cancelled (Ctrl-C, or another part failed for good)."""


# --- part math -----------------------------------------------------------------------------


def part_count(size: int, part_size: int) -> int:
    return max(1, -(-size // part_size))


def part_range(number: int, part_size: int, size: int) -> tuple[int, int]:
    """``(offset, length)`` of part ``number`` (1-based): bytes ``[(n-1)·part_size,
    n·part_size)``, the last part the remainder."""
    count = part_count(size, part_size)
    if not 1 <= number <= count:
        raise ValueError(f"part {number} outside 1..{count}")
    offset = (number - 1) * part_size
    return offset, min(part_size, size - offset)


# --- progress and rate -----------------------------------------------------------------------


class Progress(Protocol):
    def add(self, nbytes: int) -> None: ...


class NoProgress:
    def add(self, nbytes: int) -> None:
        pass


class RateLimit:
    """A shared token bucket: every thread's bytes together at most ``bytes_per_s``."""

    def __init__(self, bytes_per_s: float):
        self.rate = bytes_per_s
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + nbytes / self.rate
        if start > now:
            time.sleep(start - now)


@dataclass
class Throttle:
    """What every chunk written goes through: progress, rate limit, cancellation."""

    progress: Progress
    cancel: threading.Event
    rate: RateLimit | None = None

    def chunks(self, data: bytes | memoryview, sent: list[int]) -> Iterator[memoryview]:
        """Views, not copies, of ``data``: urllib3 hands each chunk to ``socket.sendall``,
        which takes any bytes-like object, although urllib3's annotation of ``body`` names
        only bytes and str (hence the two ``type: ignore[arg-type]`` where a request sends
        these chunks)."""
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            if self.cancel.is_set():
                raise Cancelled()
            chunk = view[start : start + CHUNK]
            if self.rate:
                self.rate.take(len(chunk))
            yield chunk
            sent[0] += len(chunk)
            self.progress.add(len(chunk))


# --- multipart ---------------------------------------------------------------------------------


class PartUrlSource(Protocol):
    batch: int  # most URLs one call hands out

    def part_urls(self, numbers: list[int]) -> tuple[dict[int, str], float]:
        """Presigned PUT URLs for ``numbers`` and when they expire (``time.time()`` scale)."""
        ...


class PartUrls:
    """Part URLs on demand: a missing or nearly expired one is fetched together with the next
    ones still needed (one call per batch), one fetch at a time."""

    def __init__(self, source: PartUrlSource, order: list[int]):
        self.source = source
        self.order = order
        self._urls: dict[int, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self.calls = 0

    def seed(self, urls: dict[int, str], expires_at: float) -> None:
        with self._lock:
            for number, url in urls.items():
                self._urls[number] = (url, expires_at)

    def get(self, number: int) -> str:
        with self._lock:
            held = self._urls.get(number)
            if held and held[1] - time.time() > URL_MARGIN_S:
                return held[0]
            now = time.time()
            index = self.order.index(number) if number in self.order else 0
            wanted = [number]
            for other in self.order[index + 1 :]:
                if len(wanted) >= self.source.batch:
                    break
                cached = self._urls.get(other)
                if not cached or cached[1] - now <= URL_MARGIN_S:
                    wanted.append(other)
            urls, expires_at = self.source.part_urls(wanted)
            self.calls += 1
            for got, url in urls.items():
                self._urls[got] = (url, expires_at)
            if number not in urls:
                raise TransferError(f"no URL handed out for part {number}", retryable=False)
            return urls[number]

    def forget(self, number: int, url: str) -> None:
        with self._lock:
            if self._urls.get(number, ("",))[0] == url:
                del self._urls[number]


def put_part(
    pool: urllib3.PoolManager,
    url: str,
    data: bytes,
    throttle: Throttle,
    timeout: urllib3.Timeout | float = PART_TIMEOUT,
) -> str:
    """PUT one part; its ETag. A failed attempt takes back the progress it made."""
    sent = [0]
    try:
        answer = pool.request(
            "PUT",
            url,
            body=throttle.chunks(data, sent),  # type: ignore[arg-type]  # see Throttle.chunks
            # Never chunked: the URL signs the part's exact Content-Length, and S3 refuses a
            # PUT without it (or with another) as SignatureDoesNotMatch.
            headers={"Content-Length": str(len(data))},
            timeout=timeout,
            retries=False,
            redirect=False,
        )
    except Cancelled:
        throttle.progress.add(-sent[0])
        raise
    except urllib3.exceptions.HTTPError as exc:
        throttle.progress.add(-sent[0])
        raise TransferError(f"no answer from S3: {getattr(exc, 'reason', None) or exc}") from exc
    if answer.status != 200:
        throttle.progress.add(-sent[0])
        raise TransferError(
            f"S3 refused the part: HTTP {answer.status} {s3_message(answer.data)}",
            status=answer.status,
            retryable=answer.status in RETRY_STATUSES or answer.status == 400,
        )
    etag = answer.headers.get("ETag")
    if not etag:
        raise TransferError("S3 answered without an ETag header", retryable=False)
    return etag


def put_parts(
    *,
    pool: urllib3.PoolManager,
    fd: int,
    size: int,
    part_size: int,
    numbers: list[int],
    urls: PartUrls,
    parallel: int = DEFAULT_PARALLEL,
    tries: int = 5,
    progress: Progress | None = None,
    rate: RateLimit | None = None,
    cancel: threading.Event | None = None,
    on_part: Callable[[int, str], None] | None = None,
) -> dict[int, str]:
    """Upload parts ``numbers`` of the file open at ``fd``; ``{part number: ETag}``.
    Raises the first error a part could not get past; Ctrl-C (KeyboardInterrupt in the
    calling thread) cancels the other parts and is re-raised."""
    cancel = cancel or threading.Event()
    throttle = Throttle(progress or NoProgress(), cancel, rate)
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for number in numbers:
        todo.put(number)
    etags: dict[int, str] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    finished = threading.Event()
    remaining = [len(numbers)]

    def one_part(number: int) -> str:
        offset, length = part_range(number, part_size, size)
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise TransferError(
                f"the file changed while uploading (part {number} short)", retryable=False
            )
        for attempt in range(1, tries + 1):
            url = urls.get(number)
            try:
                return put_part(pool, url, data, throttle)
            except TransferError as exc:
                urls.forget(number, url)
                if not exc.retryable or attempt == tries:
                    raise TransferError(
                        f"part {number} failed after {attempt} attempt(s): {exc}",
                        status=exc.status,
                        retryable=False,
                    ) from exc
            if cancel.wait(backoff_s(attempt)):
                raise Cancelled()
        raise AssertionError("unreachable")

    def worker() -> None:
        while not cancel.is_set():
            try:
                number = todo.get_nowait()
            except queue.Empty:
                return
            try:
                etag = one_part(number)
            except Cancelled:
                return
            except BaseException as exc:
                with lock:
                    errors.append(exc)
                cancel.set()
                finished.set()
                return
            with lock:
                etags[number] = etag
                remaining[0] -= 1
                if remaining[0] == 0:
                    finished.set()
            if on_part:
                on_part(number, etag)

    if not numbers:
        return etags
    threads = [
        threading.Thread(target=worker, name=f"part-{i}", daemon=True)
        for i in range(max(1, min(parallel, len(numbers))))
    ]
    for thread in threads:
        thread.start()
    try:
        while not finished.wait(0.25):
            if not any(thread.is_alive() for thread in threads):
                break
    except BaseException:
        cancel.set()
        raise
    if errors:
        raise errors[0]
    if len(etags) != len(numbers):
        raise Cancelled()
    for thread in threads:
        thread.join(5)
    return etags


# --- single request --------------------------------------------------------------------------


def post_single(
    *,
    pool: urllib3.PoolManager,
    post: dict[str, Any],
    fd: int,
    size: int,
    filename: str,
    content_type: str,
    tries: int = 4,
    progress: Progress | None = None,
    rate: RateLimit | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """The presigned POST: every field of ``post["fields"]``, then the file (``file``)."""
    cancel = cancel or threading.Event()
    throttle = Throttle(progress or NoProgress(), cancel, rate)
    boundary = "offload-" + secrets.token_hex(16)
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'.encode()
        + str(value).encode()
        + b"\r\n"
        for name, value in post["fields"].items()
    )
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{_quote(filename)}"\r\nContent-Type: {content_type}\r\n\r\n'
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = len(head) + size + len(tail)

    def body(sent: list[int]) -> Iterator[bytes | memoryview]:
        yield head
        offset = 0
        while offset < size:
            chunk = os.pread(fd, min(CHUNK, size - offset), offset)
            if not chunk:
                raise TransferError("the file changed while uploading", retryable=False)
            yield from throttle.chunks(chunk, sent)
            offset += len(chunk)
        yield tail

    for attempt in range(1, tries + 1):
        sent = [0]
        try:
            answer = pool.request(
                "POST",
                post["url"],
                body=body(sent),  # type: ignore[arg-type]  # memoryviews: see Throttle.chunks
                headers={
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                    "Content-Length": str(length),
                },
                retries=False,
                redirect=False,
            )
            status, detail = answer.status, s3_message(answer.data)
        except urllib3.exceptions.HTTPError as exc:
            status, detail = 0, f"no answer from S3: {getattr(exc, 'reason', None) or exc}"
        except Cancelled:
            throttle.progress.add(-sent[0])
            raise
        if 200 <= status < 300:
            return
        throttle.progress.add(-sent[0])
        if status not in RETRY_STATUSES or status == 403 or attempt == tries:
            raise TransferError(
                f"S3 refused the upload: HTTP {status} {detail}".strip(), status, retryable=False
            )
        if cancel.wait(backoff_s(attempt)):
            raise Cancelled()


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "").replace("\n", "")


def s3_message(raw: bytes | None) -> str:
    """S3's XML error as ``Code: Message``."""
    text = (raw or b"")[:4096].decode("utf-8", "replace")

    def tag(name: str) -> str:
        start = text.find(f"<{name}>")
        end = text.find(f"</{name}>")
        return text[start + len(name) + 2 : end] if 0 <= start < end else ""

    code, message = tag("Code"), tag("Message")
    return ": ".join(filter(None, (code, message))) or text[:200].strip()
