"""Subscribers to committed events and the local views they keep (issue 3).

``Subscriber`` follows ``<ns>.committed``, catches up from the PostgreSQL event log where Kafka no
longer has (or never had) events, and applies each committed event exactly once, in position order,
to its handlers and its view.
"""

from consumers.checkpoints import CallbackCheckpoint, Checkpoint, MemoryCheckpoint, SQLiteCheckpoint
from consumers.subscriber import Subscriber
from consumers.views import LocalView, SQLiteView, StreamState

__all__ = [
    "CallbackCheckpoint",
    "Checkpoint",
    "LocalView",
    "MemoryCheckpoint",
    "SQLiteCheckpoint",
    "SQLiteView",
    "StreamState",
    "Subscriber",
]
