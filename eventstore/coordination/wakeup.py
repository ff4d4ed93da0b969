"""Prompt wake-ups for waiters: releases NOTIFY, one LISTEN connection per coordinator wakes the
threads waiting for that resource: only the head of its queue when the payload names it (an exclusive
head, after which nobody else can be granted; see lease_sql.py), else every waiter of the resource.
When a release handed the lease to that head in its own transaction (migration 0010), the payload also
carries the grant (token, expiry, seconds waited): it is given to one waiting request of that agent,
which returns the lease without a commit of its own. Any role may NOTIFY, so the notice is believed only
if it is signed with the coordinator's key and names the request's own queue place (migration 0011);
otherwise the request checks it with one read.

Polling alone leaves a freed resource idle for up to a backoff interval; with a notification the head
of the queue polls again at once. Polling stays as the backstop (expiry has no notification, and a
notification can be missed while the listener starts or reconnects), so a failing listener only
costs latency, never correctness.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from eventstore.core.errors import EventStoreError
from eventstore.postgres.connection import Database

log = logging.getLogger("eventstore.coordination")

CHANNEL = "eventstore_leases"


@dataclass(frozen=True)
class HandedOff:
    """A lease a release handed to a waiting agent, as the notification carried it. Since migration 0011
    the notice also names the queue place it was granted for and is signed (``signed`` is the text the
    MAC covers)."""

    token: int
    expires_at: datetime
    waited_seconds: float
    received_at: float = 0.0  # time.perf_counter() when the listener handed it over (latency figures)
    seq: int | None = None
    signed: str = ""
    mac: str = ""

    def authentic(self, key: bytes | None, queue_seq: int | None) -> bool:
        """Whether the notice may be believed without a read: its HMAC-SHA256 under the coordinator's
        notice key matches, and it names the queue place this request holds (an older notice, replayed
        by anyone who listens, names an older place)."""
        if key is None or queue_seq is None or self.seq != queue_seq or not self.mac:
            return False
        expected = hmac.new(key, self.signed.encode(), hashlib.sha256).hexdigest()
        # bytes, not str: compare_digest raises TypeError on a non-ASCII str, which a forger could send
        return hmac.compare_digest(expected.encode(), self.mac.encode("utf-8", "replace"))


class Wake(threading.Event):
    """Set when the resource a request waits for is released; ``grant`` is set first when the release
    handed the lease to this request's agent."""

    def __init__(self) -> None:
        super().__init__()
        self.grant: HandedOff | None = None


_MAC = re.compile(r"[0-9a-f]{64}")


def parse(payload: str) -> tuple[str, str, HandedOff | None]:
    """A notification's resource, head agent ('' = every waiter) and hand-off, if it carries one: five
    fields (0010), or seven, signed (0011: the queue place, then the MAC of everything before it)."""
    parts = payload.split("\x1f")
    if len(parts) in (5, 7):
        token, expires, waited = parts[2:5]
        seq, signed, mac = None, "", ""
        try:
            if len(parts) == 7:
                seq, signed, mac = int(parts[5]), payload[:payload.rindex("\x1f")], parts[6]
                if _MAC.fullmatch(mac) is None:  # not a MAC the release could have printed: believe nothing
                    seq, signed, mac = None, "", ""
            return parts[0], parts[1], HandedOff(int(token), datetime.fromtimestamp(float(expires), UTC),
                                                 float(waited), seq=seq, signed=signed, mac=mac)
        except (ValueError, OverflowError, OSError):  # not ours (any role may NOTIFY): wake the head to poll
            return parts[0], parts[1], None
    return parts[0], parts[1] if len(parts) > 1 else "", None


class Wakeups:
    """Registry of waiting threads per resource, fed by a daemon LISTEN thread started on first use."""

    # Wait for notices in poll(2) on the socket (Database.listen; this connection runs no queries): psycopg's
    # timed wait spins ~1 ms of CPU per call; False is that old wait (``eventstore bench idle``'s baseline).
    idle_socket: bool = True

    def __init__(self, database: Database) -> None:
        self._database = database
        self._lock = threading.Lock()
        self._waiting: dict[str, dict[Wake, str | None]] = {}
        # Hand-offs taken by a request in this process, by (resource, agent): (token, the request). Two
        # requests of one agent for one resource share one queue place; only one of them takes a hand-off.
        self._taken: dict[tuple[str, str], tuple[int, object]] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.listening = threading.Event()

    def register(self, resource: str, agent_id: str | None = None) -> Wake:
        """An Event that is set whenever ``resource`` is released and ``agent_id`` may be next (any
        agent if None); unregister it when done."""
        event = Wake()
        with self._lock:
            self._waiting.setdefault(resource, {})[event] = agent_id
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="eventstore-lease-listener", daemon=True)
                self._thread.start()
        return event

    def claim(self, resource: str, agent_id: str, token: int, request: object) -> bool:
        """Take the hand-off ``token`` of ``resource`` for ``request``: True unless another request of
        the same agent in this process took it already (asking again for the same request is True)."""
        with self._lock:
            taken = self._taken.get((resource, agent_id))
            if taken is not None and taken[0] == token:
                return taken[1] is request
            self._taken[(resource, agent_id)] = (token, request)
            return True

    def unregister(self, resource: str, event: Wake) -> None:
        with self._lock:
            waiting = self._waiting.get(resource)
            if waiting is not None:
                waiting.pop(event, None)
                if not waiting:
                    del self._waiting[resource]

    def _wake(self, payload: str) -> None:
        """Wake for one notification: ``resource`` (every waiter) or ``resource`` chr(31) ``agent`` (its head)."""
        resource, head, grant = parse(payload)
        with self._lock:
            waiting = self._waiting.get(resource, {})
            if grant is not None:
                for event, agent in waiting.items():
                    if agent == head and event.grant is None:  # the first request of that agent gets it
                        event.grant = replace(grant, received_at=time.perf_counter())
                        event.set()
                        return
                return
            for event, agent in waiting.items():
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
                                               on_listening=self._listening, timeout=0.5,
                                               idle_socket=self.idle_socket):
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
