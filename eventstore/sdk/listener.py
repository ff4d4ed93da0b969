"""The SDK side of outcome delivery: LISTEN on the agent's channel, resolve waiting handles.

A notification carries the decision inline. Should one be missed (a reconnect, a handle created
by another process), handles still pending after ``recheck_after`` seconds are looked up in the
outcome tables, which are the source of truth.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import Future

import psycopg

from eventstore.core.errors import ClientClosedError, EventStoreError
from eventstore.core.outcomes import EmitResult
from eventstore.postgres.connection import Connection, Database
from eventstore.postgres.outcomes import lookup_outcomes
from eventstore.wire.notifications import channel_for, unpack

log = logging.getLogger(__name__)


class OutcomeListener:
    """A daemon thread holding one autocommit connection that LISTENs for one agent's outcomes."""

    def __init__(self, database: Database, agent_id: str, recheck_after: float = 1.0) -> None:
        self._database = database
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
        with self._lock:
            self._pending[event_id] = (time.monotonic(), fut)
        return fut

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
            for notes in self._database.listen([self._channel], self._stop, f"outcome listener {self._channel}",
                                               on_listening=listening):
                for note in notes:
                    try:
                        self._resolve(unpack(note.payload))
                    except (ValueError, KeyError, TypeError, IndexError) as e:
                        # Someone else NOTIFYed on our channel; the tables are the truth anyway.
                        log.warning("ignoring a malformed outcome notification: %s", e)
                if conn is not None:
                    self._recheck(conn)
        except EventStoreError as e:
            self.error = e
            log.error("outcome listener stopped: %s; pending emits will time out", e)
        finally:
            self._listening.set()

    def _recheck(self, conn: Connection, everything: bool = False) -> None:
        cutoff = time.monotonic() - (0 if everything else self._recheck_after)
        with self._lock:
            stale = []
            for eid, (t, _) in self._pending.items():  # insertion order: oldest first
                if t <= cutoff:
                    stale.append(eid)
                    if len(stale) >= 500:  # bounded work per wake-up, even with many in flight
                        break
        if stale:
            try:
                with conn.cursor() as cur:
                    self._resolve(list(lookup_outcomes(cur, stale).values()))
            except psycopg.Error as e:  # the listen loop notices the broken connection and reconnects
                log.warning("outcome re-check failed: %s", e)
                return
            with self._lock:  # look again later, not on every wake-up
                for eid in stale:
                    if eid in self._pending:
                        self._pending[eid] = (time.monotonic(), self._pending[eid][1])
