"""Where a subscriber remembers how far it got: the last applied global position.

Keep the checkpoint where the handlers keep their effects and save both together, and a restart
neither repeats nor skips anything. A purely in-memory view needs no checkpoint: it rebuilds.
Every implementation passes the contract in tests/test_contract_checkpoints.py.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import psycopg
from psycopg import sql

from eventstore.postgres.connection import Database, converted_errors


@runtime_checkable
class Checkpoint(Protocol):
    """How far a subscriber group got: the last global position whose events it applied."""

    def load(self) -> int:
        """The last position saved (0: nothing yet)."""
        ...

    def save(self, position: int) -> None:
        """Remember ``position``; the next ``load`` (after a restart, for durable ones) returns it."""
        ...


class MemoryCheckpoint:
    """A checkpoint in memory: for views that rebuild on start anyway."""

    def __init__(self, position: int = 0) -> None:
        self.position = position

    def load(self) -> int:
        return self.position

    def save(self, position: int) -> None:
        self.position = position


class CallbackCheckpoint:
    """The user keeps the checkpoint (e.g. in the same transaction as their own effects)."""

    def __init__(self, load: Callable[[], int], save: Callable[[int], None]) -> None:
        self._load = load
        self._save = save

    def load(self) -> int:
        return int(self._load())

    def save(self, position: int) -> None:
        self._save(position)


class SQLiteCheckpoint:
    """A checkpoint per subscriber group in a local SQLite file."""

    def __init__(self, path: str | Path, group: str) -> None:
        self.group = group
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("CREATE TABLE IF NOT EXISTS checkpoints (grp TEXT PRIMARY KEY, position INTEGER NOT NULL)")

    def load(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT position FROM checkpoints WHERE grp = ?", (self.group,)).fetchone()
        return int(row[0]) if row else 0

    def save(self, position: int) -> None:
        with self._lock:
            self._db.execute("INSERT INTO checkpoints (grp, position) VALUES (?, ?) ON CONFLICT (grp) "
                             "DO UPDATE SET position = excluded.position", (self.group, position))

    def close(self) -> None:
        self._db.close()


class PostgresCheckpoint:
    """A checkpoint per subscriber group in a PostgreSQL table (by default ``subscriber_checkpoints``),
    for subscribers that keep their effects in PostgreSQL: call :meth:`save_in` with the cursor of the
    transaction that applies the effects, and effects and checkpoint commit together (exactly once).
    The database may be the event store's or the application's own; the table is created if missing.
    """

    def __init__(self, database: Database | str, group: str, *, table: str = "subscriber_checkpoints") -> None:
        self.group = group
        self._db = database if isinstance(database, Database) else Database(
            database, application_name=f"eventstore-checkpoint:{group}"[:63])
        self._table = sql.Identifier(table)
        with converted_errors(), self._db.connect(autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (grp text PRIMARY KEY, position bigint NOT NULL)")
                         .format(self._table))

    def load(self) -> int:
        with converted_errors(), self._db.connect(autocommit=True) as conn:
            row = conn.execute(sql.SQL("SELECT position FROM {} WHERE grp = %s").format(self._table),
                               (self.group,)).fetchone()
        return int(row[0]) if row else 0

    def save(self, position: int) -> None:
        with converted_errors(), self._db.connect(autocommit=True) as conn, conn.cursor() as cur:
            self.save_in(cur, position)

    def save_in(self, cur: psycopg.Cursor[Any], position: int) -> None:
        """Save within the caller's transaction (a psycopg cursor), next to the effects it covers."""
        cur.execute(sql.SQL("INSERT INTO {} (grp, position) VALUES (%s, %s) ON CONFLICT (grp) "
                            "DO UPDATE SET position = excluded.position").format(self._table),
                    (self.group, position))
