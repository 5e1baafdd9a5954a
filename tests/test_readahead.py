"""The read-ahead thread behind S3Object.chunks: order, errors, bounded memory, clean stop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fargate_worker.processors import s3stream
from fargate_worker.processors.readahead import ReadAhead
from fargate_worker.processors.s3stream import open_object
from offload.jobs import JobRef


def _reader_threads(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def test_items_arrive_in_order_then_the_iteration_ends() -> None:
    reader = ReadAhead(iter(range(100)), depth=3)
    assert list(reader) == list(range(100))
    assert reader.stop(timeout_s=1)


def test_the_sources_own_exception_reaches_the_consumer_after_the_items() -> None:
    class Broken(Exception):
        pass

    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise Broken("connection reset")

    seen: list[int] = []
    with pytest.raises(Broken, match="connection reset"):
        for item in ReadAhead(source(), depth=2):
            seen.append(item)
    assert seen == [1, 2]


def _wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_the_reader_stays_at_most_depth_items_ahead() -> None:
    produced: list[int] = []
    overran = threading.Event()
    limit = [5]

    def source() -> Iterator[int]:
        for n in range(50):
            produced.append(n)
            if len(produced) > limit[0]:
                overran.set()
            yield n

    reader = ReadAhead(source(), depth=3)
    items = iter(reader)
    assert next(items) == 0
    # 1 handed out, 3 queued, 1 read and waiting for room in the queue: 5 read, then no more
    # until the consumer takes one. An unbounded reader reads on: it has ample time to.
    _wait_until(lambda: len(produced) >= 5)
    assert not overran.wait(0.5), produced
    limit[0] = 6
    assert next(items) == 1  # room for one more
    _wait_until(lambda: len(produced) >= 6)
    assert not overran.wait(0.5), produced
    assert reader.stop(timeout_s=5)


def test_stop_releases_a_reader_blocked_on_a_full_queue() -> None:
    reader = ReadAhead(iter(range(1000)), depth=1, name="test-blocked-reader")
    items = iter(reader)
    next(items)  # the consumer takes one item and walks away
    assert _reader_threads("test-blocked-reader")
    assert reader.stop(timeout_s=1)
    assert not _reader_threads("test-blocked-reader")


def test_an_abandoned_object_stream_leaves_no_reader_thread(moto_endpoint, s3, bucket) -> None:
    """A processor that stops reading early (an error, a format it rejects after the head)
    must not leave a thread reading a body that open_object has closed."""
    s3.put_object(Bucket=bucket, Key="demo/big", Body=b"x" * (12 << 20))
    with (
        pytest.raises(ValueError, match="rejected"),
        open_object(s3, JobRef(bucket, "demo/big")) as obj,
    ):
        for _chunk in obj.chunks(chunk_size=1 << 20, read_ahead=2):
            time.sleep(0.5)  # the reader fills its queue and blocks there
            raise ValueError("rejected after the first chunk")
    assert not _reader_threads("s3-read:")


def test_a_reader_can_be_iterated_once() -> None:
    reader = ReadAhead(iter([1]), depth=1)
    assert list(reader) == [1]
    with pytest.raises(RuntimeError, match="once"):
        list(reader)


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth"):
        ReadAhead(iter([]), depth=0)


def test_an_object_of_one_chunk_is_read_without_a_thread(
    moto_endpoint, s3, bucket, monkeypatch
) -> None:
    """Nothing to overlap: most uploads of a portal are small, and a thread per job costs more
    than the read. (Counted where the stream creates its readers: a thread for one chunk may
    be gone before anyone could see it.)"""
    created: list[ReadAhead] = []

    class CountedReadAhead(ReadAhead):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            created.append(self)

    monkeypatch.setattr(s3stream, "ReadAhead", CountedReadAhead)
    s3.put_object(Bucket=bucket, Key="demo/small", Body=b"x" * 2048)
    s3.put_object(Bucket=bucket, Key="demo/two-chunks", Body=b"x" * (2 << 20))
    with open_object(s3, JobRef(bucket, "demo/small")) as obj:
        assert b"".join(obj.chunks(chunk_size=1 << 20)) == b"x" * 2048
    assert created == []
    with open_object(s3, JobRef(bucket, "demo/two-chunks")) as obj:
        assert len(list(obj.chunks(chunk_size=1 << 20))) == 2
    assert len(created) == 1
