"""Prompt wake-ups for waiters: releases NOTIFY, one LISTEN connection per coordinator wakes the
threads waiting for that resource.

Polling alone leaves a freed resource idle for up to a backoff interval; with a notification the head
of the queue polls again at once. Polling stays as the backstop (expiry has no notification, and a
notification can be missed while the listener starts or reconnects), so a failing listener only
costs latency, never correctness.
"""

from __future__ import annotations

import logging
import threading

from eventstore.core.errors import EventStoreError
from eventstore.postgres.connection import Database

log = logging.getLogger("eventstore.coordination")

CHANNEL = "eventstore_leases"


class Wakeups:
    """Registry of waiting threads per resource, fed by a daemon LISTEN thread started on first use."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._lock = threading.Lock()
        self._waiting: dict[str, set[threading.Event]] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.listening = threading.Event()

    def register(self, resource: str) -> threading.Event:
        """An Event that is set whenever ``resource`` is released; unregister it when done."""
        event = threading.Event()
        with self._lock:
            self._waiting.setdefault(resource, set()).add(event)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="eventstore-lease-listener", daemon=True)
                self._thread.start()
        return event

    def unregister(self, resource: str, event: threading.Event) -> None:
        with self._lock:
            waiting = self._waiting.get(resource)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiting[resource]

    def _wake(self, resource: str) -> None:
        with self._lock:
            for event in self._waiting.get(resource, ()):
                event.set()

    def _listening(self, _conn: object) -> None:
        """(Re)connected: a release may have gone unheard meanwhile, so every waiter polls once now."""
        self.listening.set()
        with self._lock:
            for events in self._waiting.values():
                for event in events:
                    event.set()

    def _run(self) -> None:
        try:
            for notes in self._database.listen([CHANNEL], self._stop, "lease listener",
                                               on_listening=self._listening, timeout=0.5):
                for note in notes:
                    self._wake(note.payload)
        except EventStoreError as e:  # waiters fall back to polling; correctness does not depend on this
            log.error("lease listener stopped (%s); waiters fall back to polling", e)
        finally:
            self.listening.clear()

    def close(self) -> None:
        """Stop the listener thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
