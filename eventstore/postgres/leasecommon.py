"""What every lease step shares (leases.py, leaserelease.py, leaseadmin.py): the streams of the lock
history, the resource's advisory lock, the fence bump, the wake-up of waiters and the record of a wait
that ends. The lock order these steps keep is described in leases.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventstore.core import lockevents as ev
from eventstore.core.errors import StorageError
from eventstore.core.lockrules import key_of
from eventstore.postgres.eventlog import Cursor
from eventstore.postgres.lease_sql import ADVISORY_NS, BUMP_FENCE, LOCK, NOTIFY


def lease_stream(resource: str) -> str:
    """The stream that holds a resource's lock history."""
    return f"lease-{resource}"


def agent_stream(agent_id: str) -> str:
    """The stream that holds an agent's kill-switch and lock-order history."""
    return f"agent-{agent_id}"


def waited_event(resource: str, row: Sequence[Any], ended: str) -> ev.LeaseWaited:
    """The LeaseWaited of a wait that ends now, from its queue row as deleted (``WAIT_ROW``'s columns):
    migration 0013 chains a wait in the commit that ends it, not the one that queues it."""
    agent, mode, seq, enqueued_at, held_by, expected, waited = row
    return ev.LeaseWaited(resource=resource, agent_id=str(agent), mode=str(mode), held_by=[str(h) for h in held_by],
                          expected_seconds=None if expected is None else float(expected), enqueued_at=enqueued_at,
                          waited_seconds=float(waited), queue_seq=int(seq), ended=ended)


def lock_resource(cur: Cursor, resource: str) -> None:
    """Take the resource's transaction-scoped advisory lock: every lease step on one resource runs in turn."""
    cur.execute(LOCK, (ADVISORY_NS, key_of(resource)))


def notify_waiters(cur: Cursor, resource: str) -> None:
    """Wake the waiters of a resource (delivered at commit) if it has any; see wakeup.py."""
    cur.execute(NOTIFY, {"r": resource})


def bump_fence(cur: Cursor, resource: str) -> int:
    """A new fencing token for the resource from the global sequence, stored as its current one: each grant's
    token is larger than every earlier token of that resource."""
    cur.execute(BUMP_FENCE, (resource,))
    row = cur.fetchone()
    if row is None:  # INSERT ... ON CONFLICT DO UPDATE ... RETURNING always returns the row
        raise StorageError(f"bumping the fence token of {resource!r} returned no row")
    return int(row[0])
