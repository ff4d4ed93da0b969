"""Where a subscriber remembers how far it got: the last applied global position.

Keep the checkpoint where the handlers keep their effects and save both together, and a restart
neither repeats nor skips anything. A purely in-memory view needs no checkpoint: it rebuilds.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol


class Checkpoint(Protocol):
    def load(self) -> int:
        """The last position applied (0: nothing yet)."""
        ...

    def save(self, position: int) -> None: ...


class MemoryCheckpoint:
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
