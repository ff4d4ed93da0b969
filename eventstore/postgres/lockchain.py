"""The lock chain (migration 0009): the coordinator's lock history, hash-chained in its own table with its
own head, apart from the event log so that a lease step never waits for the projector's ``log_head`` lock.

A lease step collects the lock events it causes in a :class:`LockLog` and appends them with ONE statement
at the end of its transaction, so the chain's head row (locked from that insert to the commit) is the
last lock the step takes: lease steps queue on it only for their commit, never while they wait for
something else. The database chains each row (trigger ``eventstore_chain_lock_event``); ``eventstore
verify`` recomputes the chain in Python (eventstore/postgres/sidechains.py) and ``eventstore anchor``
signs its head. Readers use the view ``lock_history``, which also holds the lock events the event log
recorded before this chain existed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg

from eventstore.core.events import Event
from eventstore.core.hashing import canonical_json

Cursor = psycopg.Cursor[Any]

APPEND = """
INSERT INTO lock_events (event_id, stream, type, schema_version, payload, agent_id, lease_resource, fencing_token)
SELECT e, s, t, v, p, a, r, k
FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::int[], %s::text[], %s::text[], %s::text[], %s::bigint[])
     WITH ORDINALITY AS x(e, s, t, v, p, a, r, k, i)
ORDER BY i
"""
# The whole lock history (legacy rows from the event log first, then the chain), for readers.
READ_STREAM = """
SELECT type, payload, agent_id, lease_resource, fencing_token, recorded_at, log, n
FROM lock_history WHERE stream = %s ORDER BY log_order, n
"""


@dataclass
class LockLog:
    """The lock events one lease step causes, appended together at the end of its transaction."""

    rows: list[tuple[uuid.UUID, str, Event, str, str | None, int | None]] = field(default_factory=list)

    def add(self, stream: str, event: Event, agent_id: str, resource: str | None = None,
            token: int | None = None) -> None:
        """Record ``event`` on ``stream`` (``lease-<resource>`` or ``agent-<id>``) at the step's end."""
        self.rows.append((uuid.uuid4(), stream, event, agent_id, resource, token))

    def append(self, cur: Cursor) -> None:
        """Append the collected events to the lock chain in the caller's transaction (one statement,
        no result read, so it travels with the commit in pipeline mode); a no-op if there are none."""
        if not self.rows:
            return
        rows = self.rows
        cur.execute(APPEND, (
            [r[0] for r in rows], [r[1] for r in rows], [r[2].event_type for r in rows],
            [r[2].schema_version for r in rows], [canonical_json(r[2].model_dump(mode="json")) for r in rows],
            [r[3] for r in rows], [r[4] for r in rows], [r[5] for r in rows],
        ))
        self.rows = []


def read_stream(cur: Cursor, stream: str) -> list[dict[str, Any]]:
    """The lock history of one stream (``lease-<resource>`` / ``agent-<id>``), oldest first: type,
    payload, agent_id, lease_resource, fencing_token, recorded_at, log ('events' or 'locks') and n (its
    position in that log)."""
    cur.execute(READ_STREAM, (stream,))
    keys = ("type", "payload", "agent_id", "lease_resource", "fencing_token", "recorded_at", "log", "n")
    return [dict(zip(keys, row, strict=True)) for row in cur.fetchall()]
