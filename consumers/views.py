"""Local views: per-stream state folded from committed events, with waits for read-your-writes."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eventstore.core.errors import EmitTimeout
from eventstore.core.records import RecordedEvent

# A pure function (state, event) -> state. It must not read the view: a batch is folded before the view's
# states change, so the view shows the states as of the batch's start, and batches split differently live and
# in a rebuild (a reducer that read the view would not rebuild to the same view).
Reducer = Callable[[Any, RecordedEvent], Any]


def _position(ev: RecordedEvent) -> int:
    return ev.position


def merge_payloads(state: Any, ev: RecordedEvent) -> Any:
    """Default reducer: the stream's state is its payloads merged, newest field values winning."""
    return {**(state or {}), **ev.payload}


@dataclass(frozen=True)
class StreamState:
    """A stream's state in a view, and the version and global position it reflects."""

    stream: str
    version: int
    position: int
    state: Any


_new = object.__new__
_set = object.__setattr__


def _stream_state(stream: str, version: int, position: int, state: Any) -> StreamState:
    """``StreamState(stream, version, position, state)`` without the frozen dataclass's per-field
    ``__init__`` (most of its cost): a view builds one per applied event."""
    st: StreamState = _new(StreamState)
    _set(st, "__dict__", {"stream": stream, "version": version, "position": position, "state": state})
    return st


def _accept_all(_stream: str) -> bool:
    return True


class LocalView:
    """In-memory view of the streams a subscriber follows. Thread-safe; readers may wait on it."""

    def __init__(self, reducer: Reducer = merge_payloads, streams: Callable[[str], bool] | None = None) -> None:
        self._reducer = reducer
        self._accept = streams or _accept_all
        self._streams: dict[str, StreamState] = {}
        self._position = 0
        self._head_hash: bytes | None = None  # the chain hash of the event at _position, when known
        self._changed = threading.Condition()

    # -- writing (by the subscriber) ------------------------------------------------------------
    def version_of(self, stream: str) -> int:
        st = self._streams.get(stream)
        return 0 if st is None else st.version

    def accepts(self, stream: str) -> bool:
        return self._accept(stream)

    def apply_batch(self, events: Sequence[RecordedEvent], position: int) -> None:
        """Apply events (position order, each once) and advance the view to ``position``."""
        accept, reducer, streams = self._accept, self._reducer, self._streams
        every = accept is _accept_all
        with self._changed:
            # The states folded in this batch, and each stream's last event: one StreamState per stream per
            # batch (not per event) is built at the end, so a batch leaves fewer objects for the collector.
            states: dict[str, Any] = {}
            last_event: dict[str, RecordedEvent] = {}
            touched: dict[str, int] = {}
            folded = states.get
            for ev in events:
                stream = ev.stream
                if every or accept(stream):
                    if stream in last_event:
                        states[stream] = reducer(folded(stream), ev)
                        touched[stream] += 1
                    else:
                        prev = streams.get(stream)
                        states[stream] = reducer(None if prev is None else prev.state, ev)
                        touched[stream] = 1
                    last_event[stream] = ev
            for stream, ev in last_event.items():
                streams[stream] = _stream_state(stream, ev.version, ev.position, states[stream])
            position = max(self._position, position)
            newest = events[-1] if events and events[-1].position == position else max(
                events, key=_position, default=None)
            head_hash = newest.hash if newest is not None and newest.position == position else None
            if position != self._position or head_hash is not None:
                self._head_hash = head_hash
            self._persist(touched, position)
            self._position = position
            self._changed.notify_all()

    def _persist(self, touched: dict[str, int], position: int) -> None:
        """Keep the changed streams (name -> events applied), the position and ``_head_hash`` (the hash
        of the event at that position); in memory: nothing to do."""

    def load_position(self) -> int:
        """Where a restarted subscriber resumes: an in-memory view starts empty."""
        return 0

    def load_head(self) -> tuple[int, bytes | None]:
        """Where a restarted subscriber resumes and the chain hash of the event there (None: unknown, the
        subscriber reads it from the log)."""
        return self.load_position(), None

    # -- reading ---------------------------------------------------------------------------------
    @property
    def position(self) -> int:
        return self._position

    def get(self, stream: str, *, min_position: int | None = None, timeout: float = 10.0) -> StreamState | None:
        """The stream's state; with ``min_position``, first wait until the view reflects that position."""
        if min_position is not None:
            self.wait_for_position(min_position, timeout)
        return self._streams.get(stream)

    def streams(self) -> dict[str, StreamState]:
        with self._changed:
            return dict(self._streams)

    def wait_for_position(self, position: int, timeout: float = 10.0) -> None:
        self._wait(lambda: self._position >= position, timeout, f"global position {position}")

    def wait_for_version(self, stream: str, version: int, timeout: float = 10.0) -> StreamState | None:
        """Block until the view has ``stream`` at ``version`` or later; its state then, or None for a
        stream with no events yet (``version`` 0)."""
        self._wait(lambda: self.version_of(stream) >= version, timeout, f"{stream!r} at version {version}")
        return self._streams.get(stream)

    def wait_until(self, stream: str, predicate: Callable[[StreamState], bool], timeout: float = 10.0) -> StreamState:
        """Block until the stream's state satisfies ``predicate`` (e.g. stock > 0), bounded by ``timeout``."""
        found: list[StreamState] = []

        def ok_and_keep() -> bool:
            st = self._streams.get(stream)
            if st is not None and predicate(st):
                found[:] = [st]
                return True
            return False

        self._wait(ok_and_keep, timeout, f"a condition on {stream!r}")
        return found[0]

    def _wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EmitTimeout(f"the local view did not reach {what} within {timeout}s "
                                      f"(it is at position {self._position}); is the subscriber running?")
                self._changed.wait(left)


class SQLiteView(LocalView):
    """A LocalView persisted in SQLite: stream states and the position are saved in one SQLite
    transaction per batch, so a killed subscriber restarts where it was, without repeats or gaps."""

    def __init__(self, path: str | Path, reducer: Reducer = merge_payloads,
                 streams: Callable[[str], bool] | None = None) -> None:
        super().__init__(reducer, streams)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.executescript(
            "CREATE TABLE IF NOT EXISTS view_streams (stream TEXT PRIMARY KEY, version INTEGER NOT NULL, "
            "position INTEGER NOT NULL, state TEXT NOT NULL, applied INTEGER NOT NULL);"
            "CREATE TABLE IF NOT EXISTS view_position (id INTEGER PRIMARY KEY CHECK (id = 1), position INTEGER);"
        )
        if "hash" not in {r[1] for r in self._db.execute("PRAGMA table_info(view_position)")}:
            self._db.execute("ALTER TABLE view_position ADD COLUMN hash BLOB")  # files from before issue 9
        for stream, version, position, state in self._db.execute(
                "SELECT stream, version, position, state FROM view_streams"):
            self._streams[stream] = StreamState(stream, version, position, json.loads(state))
        row = self._db.execute("SELECT position, hash FROM view_position").fetchone()
        self._position = int(row[0]) if row else 0
        self._head_hash = bytes(row[1]) if row and row[1] is not None else None

    def load_position(self) -> int:
        return self._position

    def load_head(self) -> tuple[int, bytes | None]:
        return self._position, self._head_hash

    def _persist(self, touched: dict[str, int], position: int) -> None:
        self._db.execute("BEGIN")
        self._db.executemany(
            "INSERT INTO view_streams (stream, version, position, state, applied) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (stream) DO UPDATE SET version = excluded.version, position = excluded.position, "
            "state = excluded.state, applied = view_streams.applied + excluded.applied",
            _rows(self._streams, touched),
        )
        self._db.execute("INSERT INTO view_position (id, position, hash) VALUES (1, ?, ?) ON CONFLICT (id) "
                         "DO UPDATE SET position = excluded.position, hash = excluded.hash",
                         (position, self._head_hash))
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


def _rows(streams: dict[str, StreamState], touched: dict[str, int]) -> Iterable[tuple[Any, ...]]:
    for name, count in touched.items():
        st = streams[name]
        yield (name, st.version, st.position, json.dumps(st.state), count)
