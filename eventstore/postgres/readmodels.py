"""Read models: tables derived from the log, updated in the projector's transaction.

A read model owns its tables (``setup`` creates them if missing, under a table name it is given, so a
rebuild can fill a fresh copy) and applies each batch of committed events in position order. Because
it writes with the same cursor as the append and the offsets, each event changes it exactly once.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg

from eventstore.core.errors import ConfigurationError, EventStoreError
from eventstore.core.events import Event
from eventstore.core.records import RecordedEvent

Cursor = psycopg.Cursor[Any]
E = TypeVar("E", bound=Event)
Handler = Callable[[Cursor, RecordedEvent, Any], None]
_TABLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class ReadModelError(EventStoreError):
    """A read-model handler failed on an event; the projector dead-letters that event."""

    def __init__(self, model: str, event: RecordedEvent, cause: BaseException) -> None:
        self.model = model
        self.event = event
        super().__init__(f"read model {model!r} failed on {event.type} of stream {event.stream!r}: {cause}")


class ReadModel:
    """Subclass and decorate methods with ``@ReadModel.on(EventType)``, or override ``apply_batch``.

    Handlers get ``(cursor, recorded_event, typed_event)`` and must write with the cursor given
    (``self.table`` is the table to write, a safe SQL identifier). They must not modify the recorded
    event's payload: the same objects are handed to this process's publisher after the commit, which
    checks their chain hashes but does not re-hash the payload.
    """

    name: str = ""
    table: str = ""
    _handlers: dict[str, str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        handlers: dict[str, str] = {}
        for base in reversed(cls.__mro__):
            for attr, fn in vars(base).items():
                for event_type in getattr(fn, "_es_handles", ()):
                    handlers[event_type] = attr
        cls._handlers = handlers

    def __init__(self, table: str | None = None) -> None:
        table = table or self.table or self.name
        if not _TABLE_RE.match(table):
            raise ConfigurationError(f"read model table name {table!r} is not a plain lower-case SQL identifier")
        self.table = table

    @staticmethod
    def on(*event_types: type[Event]) -> Callable[[Callable[..., None]], Callable[..., None]]:
        def mark(fn: Callable[..., None]) -> Callable[..., None]:
            fn._es_handles = tuple(t.event_type for t in event_types)  # type: ignore[attr-defined]
            return fn

        return mark

    @property
    def event_types(self) -> frozenset[str]:
        return frozenset(self._handlers)

    def setup(self, cur: Cursor) -> None:
        """Create the model's tables if they do not exist."""

    def apply_batch(self, cur: Cursor, events: Sequence[RecordedEvent]) -> None:
        """Apply committed events (already filtered to this model's types, in position order)."""
        for ev in events:
            getattr(self, self._handlers[ev.type])(cur, ev, ev.event())


class ReadModelRegistry:
    """The read models a projector maintains; app modules register theirs at import."""

    def __init__(self) -> None:
        self._factories: dict[str, Callable[[], ReadModel]] = {}
        self._lock = threading.Lock()

    def register(self, factory: Callable[[], ReadModel], name: str | None = None) -> None:
        key = str(name or getattr(factory, "name", "") or getattr(factory, "__name__", ""))
        with self._lock:
            self._factories[key] = factory

    def names(self) -> list[str]:
        return sorted(self._factories)

    def create(self, names: Sequence[str] | None = None) -> list[ReadModel]:
        chosen = self.names() if names is None else list(names)
        missing = [n for n in chosen if n not in self._factories]
        if missing:
            raise ConfigurationError(f"unknown read model(s) {missing}; registered: {self.names()}")
        return [self._factories[n]() for n in chosen]


read_models = ReadModelRegistry()


def apply_all(cur: Cursor, models: Sequence[ReadModel], events: Sequence[RecordedEvent]) -> None:
    """Apply a batch to every model, naming the model and event when a handler fails."""
    for model in models:
        mine = [e for e in events if e.type in model.event_types]
        if not mine:
            continue
        try:
            # A nested pipeline block syncs at its end, so a failing handler statement raises here,
            # where it can be attributed to this model, not later at commit.
            with cur.connection.pipeline():
                model.apply_batch(cur, mine)
        except psycopg.errors.OperationalError:
            raise
        except Exception as e:
            raise ReadModelError(model.name, mine[0] if len(mine) == 1 else mine[-1], e) from e
