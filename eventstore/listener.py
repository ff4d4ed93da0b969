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
from typing import Any

import psycopg
from psycopg import sql

from eventstore.db import convert
from eventstore.errors import ClientClosedError
from eventstore.notify import channel_for, unpack
from eventstore.outcomes import EmitResult, Outcome

log = logging.getLogger(__name__)

LOOKUP_OUTCOMES = """
SELECT event_id, 'committed', stream, version, position, version, NULL FROM events
 WHERE event_id = ANY(%(ids)s::uuid[])
UNION ALL
SELECT o.event_id, o.status, o.stream, CASE WHEN o.status = 'duplicate' THEN e.version END,
       o.original_position, o.current_version, o.reason
  FROM outcomes o LEFT JOIN events e ON e.position = o.original_position
 WHERE o.event_id = ANY(%(ids)s::uuid[])
"""


def lookup_outcomes(cur: psycopg.Cursor[Any], ids: list[uuid.UUID]) -> dict[uuid.UUID, EmitResult]:
    """Recorded outcomes of these event ids; a committed row wins over any other record."""
    cur.execute(LOOKUP_OUTCOMES, {"ids": ids})
    found: dict[uuid.UUID, EmitResult] = {}
    for row in cur.fetchall():
        r = EmitResult(row[0], Outcome(row[1]), row[2], row[3], row[4], row[5], row[6])
        if r.event_id not in found or r.status is Outcome.COMMITTED:
            found[r.event_id] = r
    return found


class OutcomeListener:
    """A daemon thread holding one autocommit connection that LISTENs for one agent's outcomes."""

    def __init__(self, database_url: str, agent_id: str, recheck_after: float = 1.0) -> None:
        self._url = database_url
        self._channel = channel_for(agent_id)
        self._recheck_after = recheck_after
        self._pending: dict[uuid.UUID, tuple[float, Future[EmitResult]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._error: psycopg.Error | None = None
        self._thread = threading.Thread(target=self._run, name=f"outcomes-{agent_id}", daemon=True)
        self._thread.start()
        if not self._listening.wait(15) and self._error is not None:
            raise convert(self._error) from self._error

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

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    self._listening.set()
                    self._recheck(conn, everything=True)
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=0.25):
                            try:
                                self._resolve(unpack(n.payload))
                            except (ValueError, KeyError, TypeError, IndexError) as e:
                                # Someone else NOTIFYed on our channel; the tables are the truth anyway.
                                log.warning("ignoring a malformed outcome notification: %s", e)
                        self._recheck(conn)
            except psycopg.Error as e:
                self._error = e
                if not self._stop.is_set():
                    log.warning("outcome listener lost its connection, reconnecting: %s", e)
                    time.sleep(0.5)

    def _recheck(self, conn: psycopg.Connection[Any], everything: bool = False) -> None:
        cutoff = time.monotonic() - (0 if everything else self._recheck_after)
        with self._lock:
            stale = []
            for eid, (t, _) in self._pending.items():  # insertion order: oldest first
                if t <= cutoff:
                    stale.append(eid)
                    if len(stale) >= 500:  # bounded work per wake-up, even with many in flight
                        break
        if stale:
            with conn.cursor() as cur:
                self._resolve(list(lookup_outcomes(cur, stale).values()))
            with self._lock:  # look again later, not on every wake-up
                for eid in stale:
                    if eid in self._pending:
                        self._pending[eid] = (time.monotonic(), self._pending[eid][1])
