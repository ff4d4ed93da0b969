"""The SDK side of outcome delivery: LISTEN on the agent's channel, resolve waiting handles.

Any role that can connect can NOTIFY any channel, so a payload is believed only when it is **sealed** with
this agent's credential (wire/notifications.py, :class:`OutcomeSeal`: an HMAC under a key only the agent
and the projector role hold): its decisions settle the handles at once, without a query. Anything else
(unsealed, sealed with another key, changed or cut, or a client without a credential) is only a wake-up:
the listener reads the decisions of the event ids it names (or, if it names none it waits for, of the
oldest pending ones) from the outcome tables, which only the projector role writes, restricted to this
agent's own events: one batched query per wake-up. An identity refusal (bad signature, unknown or revoked
credential) settles a handle only when it names this client's own key id and the projector could verify it
under that key (or the key was not registered), or when this client has no credential: anyone can send an
unsigned envelope naming this agent and a pending event id (docs/security.md, "Identity refusals").
Should a notification be missed (a reconnect), handles still pending after ``recheck_after`` seconds are
looked up too. The pending map is bounded (``max_pending``); a handle whose caller gave up is forgotten.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from concurrent.futures import Future
from typing import Any

import psycopg

from eventstore.core.auth import Credential
from eventstore.core.errors import EventStoreError
from eventstore.core.outcomes import EmitResult, outcome_of, reason_of
from eventstore.postgres.connection import Connection, Database
from eventstore.postgres.outcomes import lookup_outcome_rows, result_from_row
from eventstore.sdk.pending import EmitHandle, PendingOutcomes
from eventstore.wire.notifications import OutcomeSeal, channel_for

log = logging.getLogger(__name__)


class OutcomeListener:
    """A daemon thread holding one autocommit connection that LISTENs for one agent's outcomes and
    settles the handles of :class:`PendingOutcomes` waiting for them."""

    # Wait for notices in poll(2) on the socket (Database.listen): psycopg's timed wait spins ~1 ms of CPU
    # per call, 0.4 % of a core for an idle agent; False is that old wait (``eventstore bench idle``'s baseline).
    idle_socket: bool = True

    def __init__(self, database: Database, agent_id: str, recheck_after: float = 1.0,
                 max_pending: int = 100_000, pending: PendingOutcomes | None = None,
                 credential: Credential | None = None) -> None:
        self._database = database
        self._agent_id = agent_id
        self._channel = channel_for(agent_id)
        # Sealed payloads are opened with the agent's credential; None: every notification is a wake-up only.
        self.seal: OutcomeSeal | None = None if credential is None else OutcomeSeal(agent_id, credential)
        # Identity refusals answer this client only if they name its key id (or it has none): docs/security.md.
        self._key_id = None if credential is None else credential.key_id
        self.sealed_settled = 0  # handles settled straight from a sealed payload (benchmarks, tests)
        self._recheck_after = recheck_after
        self.table = pending if pending is not None else PendingOutcomes(max_pending)
        self._stop = threading.Event()
        self._listening = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"outcomes-{agent_id}", daemon=True)
        self._thread.start()
        self._listening.wait(15)

    def expect(self, event_id: uuid.UUID) -> Future[EmitResult]:
        """Wait for the outcome of an event emitted by other means (tools, tests): its Future."""
        handle = EmitHandle(event_id, "", str(event_id), self.table)
        self.table.add(handle)
        return handle.future

    def forget(self, event_id: uuid.UUID) -> None:
        """Stop waiting for an event's outcome (its caller gave up)."""
        self.table.forget(event_id)

    @property
    def pending(self) -> int:
        """How many handles wait for an outcome (bounded by ``max_pending``)."""
        return len(self.table)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.table.close()

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
                                                f"outcome listener {self._channel}", on_listening=listening,
                                                idle_socket=self.idle_socket):
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
        """Notifications arrived: settle what sealed payloads decided; read the decisions of the events that
        unsealed ones name from the tables, in one query."""
        sealed: dict[str, list[Any]] = {}
        named: list[str] = []
        unsealed = False
        seal = self.seal
        for payload in payloads:
            rows = None if seal is None else seal.open(payload)
            if rows is None:
                unsealed = True
                named.extend(named_ids(payload))
                continue
            for row in rows:
                if row[0] not in sealed or row[1] == "committed":  # as the lookup: a committed row wins
                    sealed[row[0]] = row
        if sealed:
            named.extend(self._settle_sealed(sealed))
        if unsealed or named:
            # Only ids this client waits for reach the query (its own, in canonical form): a forged id never does.
            wanted = self.table.waiting(set(named)) or (self.table.oldest(500) if unsealed else [])
            self._lookup(conn, wanted)

    def _settle_sealed(self, rows: dict[str, list[Any]]) -> list[str]:
        """Settle the waiting handles from verified rows; the ids of rows that do not make a result (none
        from a projector: those are left to the lookup)."""
        good: dict[str, list[Any]] = {}
        bad: list[str] = []
        for eid, row in rows.items():
            try:
                outcome_of(row[1])
                if row[7] is not None:
                    reason_of(row[7])
            except ValueError:
                bad.append(eid)
                continue
            good[eid] = row
        if good:
            self.sealed_settled += len(self.table.waiting(good))
            self.table.settle_rows(good, lambda event_id, row: result_from_row(row, event_id))
        return bad

    def _lookup(self, conn: Connection, ids: list[str]) -> bool:
        if not ids:
            return True
        if len(self.table.notes) > 1_000:  # bounded: notes of handles no longer pending are dropped
            self.table.prune_notes()
        try:
            with conn.cursor() as cur:
                self.table.settle_rows(lookup_outcome_rows(cur, ids, self._agent_id, key_id=self._key_id,
                                                           ignored=self.table.notes),
                                       lambda event_id, row: result_from_row(row, event_id))
        except psycopg.Error as e:  # the listen loop notices the broken connection and reconnects
            log.warning("outcome lookup failed: %s", e)
            return False
        return True

    def _recheck(self, conn: Connection, everything: bool = False) -> None:
        cutoff = time.monotonic() - (0 if everything else self._recheck_after)
        # bounded work per wake-up, even with many in flight; O(stale) under the lock every emit takes
        stale = self.table.stale(cutoff, 500)
        if stale and self._lookup(conn, stale):
            self.table.recheck_later(stale)  # look again later, not on every wake-up


def named_ids(payload: str) -> list[str]:
    """The event ids a notification names, as text (wire/notifications.py's positional rows: the id comes
    first); nothing for a payload in any other form, which is then a forgery or noise, still only a
    wake-up. Only the ids are read: the decisions themselves come from the tables."""
    try:
        rows = json.loads(payload)
        if not isinstance(rows, list):
            return []
        return [row[0] for row in rows if isinstance(row, list) and row and isinstance(row[0], str)]
    except ValueError:
        return []
