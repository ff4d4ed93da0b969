"""The event log reader contract (eventstore/postgres/logreader.py), against every implementation
(today PostgreSQL, on a real server). Events are appended directly, without Kafka, to keep it fast."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from eventstore.core.errors import EmitTimeout
from eventstore.core.records import DirectEvent
from eventstore.examples.inventory import InventoryAdjusted
from eventstore.postgres import eventlog
from eventstore.postgres.logreader import EventLogReader, PostgresEventLog

Append = Callable[..., list[int]]


@pytest.fixture(params=["postgres"])
def log(request: pytest.FixtureRequest, database_url: str) -> Iterator[tuple[EventLogReader, Append]]:
    def append(*streams: str) -> list[int]:
        """Append one event per named stream in one transaction; their positions."""
        with psycopg.connect(database_url) as conn, conn.cursor() as cur:
            recorded = eventlog.append_direct(cur, [DirectEvent(s, InventoryAdjusted(sku="x", delta=1), "writer")
                                                    for s in streams])
        return [r.position for r in recorded]

    with PostgresEventLog(database_url) as reader:
        yield reader, append


def test_an_empty_log(log: tuple[EventLogReader, Append]) -> None:
    reader, _ = log
    assert isinstance(reader, EventLogReader)
    assert reader.head_position() == 0
    assert reader.stream_version("nothing") == 0
    assert reader.read_stream("nothing") == []
    assert reader.read_all() == []
    reader.wait_for_position(0, timeout=0.1)


def test_streams_have_gapless_versions_and_the_log_gapless_positions(log: tuple[EventLogReader, Append]) -> None:
    reader, append = log
    first = append("s-a", "s-b", "s-a")
    second = append("s-b")
    assert first + second == [1, 2, 3, 4]
    assert reader.head_position() == 4
    assert (reader.stream_version("s-a"), reader.stream_version("s-b")) == (2, 2)
    a = reader.read_stream("s-a")
    assert [(e.stream, e.version, e.position) for e in a] == [("s-a", 1, 1), ("s-a", 2, 3)]
    assert [e.version for e in reader.read_stream("s-b", from_version=1)] == [2]
    assert [e.position for e in reader.read_all()] == [1, 2, 3, 4]
    assert [e.position for e in reader.read_all(after_position=2)] == [3, 4]
    assert [e.position for e in reader.read_all(limit=3)] == [1, 2, 3]
    assert [e.version for e in reader.read_stream("s-a", limit=1)] == [1]
    ev = a[0]
    assert ev.type == "InventoryAdjusted" and ev.payload == {"sku": "x", "delta": 1} and ev.agent_id == "writer"


def test_wait_for_position_times_out_then_returns_when_the_log_reaches_it(
        log: tuple[EventLogReader, Append]) -> None:
    reader, append = log
    with pytest.raises(EmitTimeout):
        reader.wait_for_position(1, timeout=0.2)
    timer = threading.Timer(0.3, append, args=("late",))
    timer.start()
    t0 = time.monotonic()
    reader.wait_for_position(1, timeout=20)
    timer.join()
    assert time.monotonic() - t0 >= 0.25 and reader.head_position() == 1
