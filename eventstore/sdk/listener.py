"""The SDK side of outcome delivery: LISTEN on the agent's channel, resolve waiting handles.

A notification is only a wake-up: any role that can connect can NOTIFY any channel, so its payload
is never believed. On each wake-up (all notifications queued at that moment) the listener reads the
decisions of the event ids they name (or, if they name none it waits for, of the oldest pending ones)
from the outcome tables, which only the projector role writes, restricted to this agent's own
events: one batched query per wake-up. Should a
notification be missed (a reconnect), handles still pending after ``recheck_after`` seconds are
looked up too. The pending map is bounded (``max_pending``); a handle whose caller gave up is forgotten.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from concurrent.futures import Future

import psycopg

from eventstore.core.errors import ClientClosedError, EmitTimeout, EventStoreError
from eventstore.core.outcomes import EmitResult
from eventstore.postgres.connection import Connection, Database
from eventstore.postgres.outcomes import lookup_outcomes
from eventstore.wire.notifications import channel_for, unpack

log = logging.getLogger(__name__)


class OutcomeListener:
    """A daemon thread holding one autocommit connection that LISTENs for one agent's outcomes."""

    def __init__(self, database: Database, agent_id: str, recheck_after: float = 1.0,
                 max_pending: int = 100_000) -> None:
        self._database = database
        self._agent_id = agent_id
        self._max_pending = max_pending
        self._channel = channel_for(agent_id)
        self._recheck_after = recheck_after
        self._pending: dict[uuid.UUID, tuple[float, Future[EmitResult]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listening = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"outcomes-{agent_id}", daemon=True)
        self._thread.start()
        self._listening.wait(15)

    def expect(self, event_id: uuid.UUID) -> Future[EmitResult]:
        fut: Future[EmitResult] = Future()
        evicted: list[Future[EmitResult]] = []
        with self._lock:
            self._pending[event_id] = (time.monotonic(), fut)
            while len(self._pending) > self._max_pending:  # oldest first: insertion order
                evicted.append(self._pending.pop(next(iter(self._pending)))[1])
        for old in evicted:
            if not old.done():
                old.set_exception(EmitTimeout(
                    f"more than {self._max_pending} outcomes pending; stopped waiting for the oldest "
                    "(look it up with client.outcome(event_id) or re-emit with the same idempotency key)"))
        return fut

    @property
    def pending(self) -> int:
        """How many handles wait for an outcome (bounded by ``max_pending``)."""
        with self._lock:
            return len(self._pending)

    def fail(self, event_id: uuid.UUID, exc: BaseException) -> None:
        with self._lock:
            entry = self._pending.pop(event_id, None)
        if entry is not None and not entry[1].done():
            entry[1].set_exception(exc)

    def forget(self, event_id: uuid.UUID) -> None:
        """Stop waiting for an event's outcome (its caller gave up)."""
        with self._lock:
            self._pending.pop(event_id, None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with self._lock:
            pending, self._pending = self._pending, {}
        for _, fut in pending.values():
            if not fut.done():
                fut.set_exception(ClientClosedError("the client was closed before the outcome arrived"))

    def _resolve(self, results: list[EmitResult]) -> None:
        for r in results:
            with self._lock:
                entry = self._pending.pop(r.event_id, None)
            if entry is not None and not entry[1].done():
                entry[1].set_result(r)

    def _on_listening(self, conn: Connection) -> None:
        self._listening.set()
        self._recheck(conn, everything=True)  # outcomes decided while we were not listening

    def _run(self) -> None:
        conn: Connection | None = None

        def listening(c: Connection) -> None:
            nonlocal conn
            conn = c
            self._on_listening(c)

        try:
            for notes in self._database.listen([self._channel], self._stop,
                                                       f"outcome listener {self._channel}", on_listening=listening):
                if notes and conn is not None:
                    self._wake(conn, [n.payload for n in notes])
                if conn is not None:
                    self._recheck(conn)
        except EventStoreError as e:
            self.error = e
            log.error("outcome listener stopped: %s; pending emits will time out", e)
        finally:
            self._listening.set()

    def _wake(self, conn: Connection, payloads: list[str]) -> None:
        """Notifications arrived: read the named pending events' decisions from the tables, in one query."""
        named: set[uuid.UUID] = set()
        for payload in payloads:
            # Not the projector's format: a forgery or noise, still only a wake-up.
            with contextlib.suppress(ValueError, KeyError, TypeError, IndexError):
                named.update(r.event_id for r in unpack(payload))
        with self._lock:
            wanted = [eid for eid in named if eid in self._pending]
            if not wanted:
                wanted = [eid for eid, _ in zip(self._pending, range(500), strict=False)]
        self._lookup(conn, wanted)

    def _lookup(self, conn: Connection, ids: list[uuid.UUID]) -> bool:
        if not ids:
            return True
        try:
            with conn.cursor() as cur:
                self._resolve(list(lookup_outcomes(cur, ids, self._agent_id).values()))
        except psycopg.Error as e:  # the listen loop notices the broken connection and reconnects
            log.warning("outcome lookup failed: %s", e)
            return False
        return True

    def _recheck(self, conn: Connection, everything: bool = False) -> None:
        cutoff = time.monotonic() - (0 if everything else self._recheck_after)
        with self._lock:
            stale = []
            # Insertion order is time order (re-checked entries move to the end below), so the scan
            # stops at the first fresh entry: a wake-up costs O(stale), not O(pending), under the lock
            # that every emit takes too.
            for eid, (t, _) in self._pending.items():
                if t > cutoff:
                    break
                stale.append(eid)
                if len(stale) >= 500:  # bounded work per wake-up, even with many in flight
                    break
        if stale:
            if not self._lookup(conn, stale):
                return
            with self._lock:  # look again later, not on every wake-up: to the end of the order
                now = time.monotonic()
                for eid in stale:
                    entry = self._pending.pop(eid, None)
                    if entry is not None:
                        self._pending[eid] = (now, entry[1])
