"""What a lease step reads about a resource and the requesting agent, in one statement (``SNAPSHOT``):
overdue holders expired and abandoned waiters purged on the way, then the live holders, the queue, the
fence token, the other resources the agent holds, the agent's status and its own wait."""

from __future__ import annotations

from dataclasses import dataclass, field

from eventstore.core import lockevents as ev
from eventstore.core.lockrules import Mode, Waiter
from eventstore.postgres.eventlog import Cursor
from eventstore.postgres.lease_sql import SNAPSHOT
from eventstore.postgres.leasecommon import waited_event


@dataclass(frozen=True)
class Expiry:
    """A holder whose TTL ran out and was fenced during some step."""

    resource: str
    agent_id: str
    token: int
    held_seconds: float


@dataclass
class Snapshot:
    """What one SNAPSHOT statement read about a resource and the requesting agent."""

    expired: list[Expiry] = field(default_factory=list)
    holders: list[tuple[str, Mode, int]] = field(default_factory=list)
    waiters: list[Waiter] = field(default_factory=list)
    fence: int | None = None
    held_elsewhere: list[str] = field(default_factory=list)
    handed_off: set[str] = field(default_factory=set)  # holders granted by a release's hand-off, not yet taken
    agent: tuple[str, str | None] | None = None
    my_wait: tuple[float, bool, float | None, float] | None = None  # waited, alerted, expected, heartbeat age
    purged: list[ev.LeaseWaited] = field(default_factory=list)  # abandoned waits (stale heartbeat) removed now


def snapshot(cur: Cursor, resource: str, agent_id: str, stale_after: float) -> Snapshot:
    """In one statement: expire overdue holders and purge abandoned waiters of the resource, then read
    its live holders, its queue, its fence token, the other resources the agent holds, and the agent's
    status (re-checked under a lock by the grant itself)."""
    cur.execute(SNAPSHOT, {"r": resource, "a": agent_id, "stale": stale_after})
    return read_snapshot(cur, resource)


def read_snapshot(cur: Cursor, resource: str) -> Snapshot:
    """Sort the rows of the one-statement snapshot just executed on ``cur`` into a :class:`Snapshot`."""
    snap = Snapshot()
    for kind, name, mode, num, seq, at, held, expected, age, held_by in cur.fetchall():
        if kind == "purged":
            snap.purged.append(waited_event(resource, (name, mode, seq, at, held_by, expected, held), "purged"))
        elif kind == "expired":
            snap.expired.append(Expiry(resource, str(name), int(num), float(held)))
        elif kind == "holder":
            snap.holders.append((str(name), Mode(mode), int(num)))
            if expected:
                snap.handed_off.add(str(name))
        elif kind == "waiter":
            snap.waiters.append(Waiter(resource, str(name), Mode(mode), int(seq), at))
        elif kind == "fence":
            snap.fence = int(num)
        elif kind == "mywait":
            snap.my_wait = (float(held), bool(num), None if expected is None else float(expected), float(age))
        elif kind == "agent":
            snap.agent = (str(name), None if mode is None else str(mode))
        else:
            snap.held_elsewhere.append(str(name))
    snap.waiters.sort(key=lambda w: w.seq)
    return snap
