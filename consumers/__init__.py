"""Subscribers to committed events and the local views they keep (issue 3).

``Subscriber`` follows ``<ns>.committed``, catches up from the PostgreSQL event log where Kafka no
longer has (or never had) events, and applies committed events in position order without gaps or
repeats to its view (and at least once to handlers across crashes).
"""

from consumers.checkpoints import (
    CallbackCheckpoint,
    Checkpoint,
    MemoryCheckpoint,
    PostgresCheckpoint,
    SQLiteCheckpoint,
)
from consumers.subscriber import Subscriber
from consumers.views import LocalView, SQLiteView, StreamState

__all__ = [
    "CallbackCheckpoint",
    "Checkpoint",
    "LocalView",
    "MemoryCheckpoint",
    "PostgresCheckpoint",
    "SQLiteCheckpoint",
    "SQLiteView",
    "StreamState",
    "Subscriber",
]
