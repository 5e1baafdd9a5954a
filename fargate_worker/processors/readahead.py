"""Read the next chunks of a stream in a background thread while the caller works on this one.

A processor that checksums or parses an object in the thread that also reads it leaves the
network idle while it computes and the CPU idle while it waits for bytes. Socket reads and
hashlib both release the GIL on large buffers, so one reader thread running a few chunks
ahead lets the two overlap (``bench/stream_memory.py`` measures the gain). Memory stays
bounded whatever the object size: at most ``depth`` chunks wait between the two threads.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_DEPTH = 2  # with 4 MiB chunks: enough to keep the reader busy while a chunk is hashed
_POLL_S = 0.05  # how soon a reader blocked on a full queue notices it was stopped
_END = object()


class _Failure:
    """What the reader raised, carried to the consumer to be raised there."""

    def __init__(self, error: BaseException):
        self.error = error


class ReadAhead(Generic[T]):
    """Iterate over ``source`` from a daemon thread, up to ``depth`` items ahead.

    The consumer sees the items in order, then the source's exception if it raised one (same
    object, so retry rules keyed on its type still apply). ``stop()`` must be called when the
    consumer is done, early or not: it releases a reader blocked on the full queue. The owner
    of the underlying stream stops the reader before closing the stream, so the thread is
    never left reading a closed stream.
    """

    def __init__(self, source: Iterator[T], depth: int = DEFAULT_DEPTH, name: str = "read-ahead"):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, not {depth}")
        self._source = source
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._read, name=name, daemon=True)

    def __iter__(self) -> Iterator[T]:
        if self._thread.ident is not None:
            raise RuntimeError("a ReadAhead can be iterated once")
        self._thread.start()
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]  # everything else came from the source

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Stop the reader and wait up to ``timeout_s`` for it to exit. Returns False when it
        is still blocked inside the source (a stalled socket read ends at the client's read
        timeout; the thread exits then, without touching the queue again)."""
        self._stopped.set()
        if self._thread.ident is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _read(self) -> None:
        try:
            for item in self._source:
                if not self._offer(item):
                    return
        except BaseException as exc:  # every error, even KeyboardInterrupt, is the consumer's
            self._offer(_Failure(exc))
            return
        self._offer(_END)

    def _offer(self, item: object) -> bool:
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False
