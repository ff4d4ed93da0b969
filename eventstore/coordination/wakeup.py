"""Prompt wake-ups for waiters: releases NOTIFY, one LISTEN connection per coordinator wakes the
threads waiting for that resource: only the head of its queue when the payload names it (an exclusive
head, after which nobody else can be granted; see lease_sql.py), else every waiter of the resource.

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
        self._waiting: dict[str, dict[threading.Event, str | None]] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.listening = threading.Event()

    def register(self, resource: str, agent_id: str | None = None) -> threading.Event:
        """An Event that is set whenever ``resource`` is released and ``agent_id`` may be next (any
        agent if None); unregister it when done."""
        event = threading.Event()
        with self._lock:
            self._waiting.setdefault(resource, {})[event] = agent_id
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="eventstore-lease-listener", daemon=True)
                self._thread.start()
        return event

    def unregister(self, resource: str, event: threading.Event) -> None:
        with self._lock:
            waiting = self._waiting.get(resource)
            if waiting is not None:
                waiting.pop(event, None)
                if not waiting:
                    del self._waiting[resource]

    def _wake(self, payload: str) -> None:
        """Wake for one notification: ``resource`` (every waiter) or ``resource`` chr(31) ``agent`` (its head)."""
        resource, sep, head = payload.rpartition("\x1f")
        if not sep:
            resource, head = payload, ""
        with self._lock:
            for event, agent in self._waiting.get(resource, {}).items():
                if not head or agent is None or agent == head:
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
