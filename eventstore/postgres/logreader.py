"""The event log's read side as one small typed interface, and its PostgreSQL implementation.

Readers (the SDK, subscribers, auditors' tools) need five questions answered: a stream's events, the
global log after a position, a stream's version, the log head, and "wait until the log includes this
position" (read-your-writes). tests/test_contract_eventlog.py is the contract every implementation passes.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import psycopg

from eventstore.core.records import RECORDED_FIELDS, RecordedEvent
from eventstore.postgres import eventlog
from eventstore.postgres.connection import Database, converted_errors
from eventstore.wire.committed import COMMITTED_ROW

# The committed topic's read: every column already in the message's text form (wire.committed.COMMITTED_ROW),
# as plain tuples: no row factory, no UUID/jsonb/bytea parsing only for the publisher to print it again.
READ_COMMITTED_ROWS = (
    f"SELECT {', '.join(COMMITTED_ROW[name] for name in RECORDED_FIELDS)} FROM events "
    "WHERE position > %s AND position < %s ORDER BY position LIMIT %s"
)


@runtime_checkable
class EventLogReader(Protocol):
    """Read committed events. Versions start at 1 per stream; positions are global, gapless, increasing."""

    def read_stream(self, stream: str, from_version: int = 0, limit: int = 10_000) -> list[RecordedEvent]:
        """Events of ``stream`` with version > ``from_version``, in version order (at most ``limit``)."""
        ...

    def read_all(self, after_position: int = 0, limit: int = 10_000) -> list[RecordedEvent]:
        """Events with position > ``after_position``, in position order (at most ``limit``)."""
        ...

    def stream_version(self, stream: str) -> int:
        """The stream's version: 0 for a stream with no events."""
        ...

    def head_position(self) -> int:
        """The position of the newest committed event (0 for an empty log)."""
        ...

    def wait_for_position(self, position: int, timeout: float = 10.0) -> None:
        """Return once the log includes ``position``; EmitTimeout after ``timeout`` seconds."""
        ...


def read_committed_rows(cur: psycopg.Cursor[Any], after_position: int, before_position: int | None,
                        limit: int) -> list[tuple[Any, ...]]:
    """Rows of the events with ``after_position < position < before_position`` (no upper bound for None), in
    position order, at most ``limit``, in the text form ``wire.committed.encode_row`` takes."""
    cur.execute(READ_COMMITTED_ROWS, (after_position, 2**63 - 1 if before_position is None else before_position,
                                      limit))
    return cur.fetchall()


class PostgresEventLog:
    """The event log in PostgreSQL, read through a small connection pool."""

    def __init__(self, database: Database | str, *, max_size: int = 4) -> None:
        db = database if isinstance(database, Database) else Database(database, application_name="eventstore-reader")
        self._pool = db.pool(min_size=1, max_size=max_size, name="eventstore-log-reader")

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> PostgresEventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_stream(self, stream: str, from_version: int = 0, limit: int = 10_000) -> list[RecordedEvent]:
        with converted_errors(), self._pool.connection() as conn, conn.cursor() as cur:
            return eventlog.read_stream(cur, stream, from_version, limit)

    def read_all(self, after_position: int = 0, limit: int = 10_000) -> list[RecordedEvent]:
        with converted_errors(), self._pool.connection() as conn, conn.cursor() as cur:
            return eventlog.read_all(cur, after_position, limit)

    def stream_version(self, stream: str) -> int:
        with converted_errors(), self._pool.connection() as conn, conn.cursor() as cur:
            return eventlog.stream_version(cur, stream)

    def head_position(self) -> int:
        with converted_errors(), self._pool.connection() as conn, conn.cursor() as cur:
            return eventlog.head_position(cur)

    def wait_for_position(self, position: int, timeout: float = 10.0) -> None:
        with converted_errors(), self._pool.connection() as conn, conn.cursor() as cur:
            eventlog.wait_for_position(cur, position, timeout)
