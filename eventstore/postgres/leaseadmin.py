"""What operators do to leases, apart from the request path (leases.py) and the release
(leaserelease.py): the kill switch (mark an agent killed, revoke every lease and wait it has, revive it)
and the reads behind the deadlock detector, the metrics and the API (the wait-for graph, holders, fence
rejections). Same lock order and lock chain as leases.py; the resource lock, fence bump, notification
and wait record are leasecommon.py's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventstore.core import lockevents as ev
from eventstore.core.lockrules import Holder, Mode, Waiter, key_of
from eventstore.postgres.eventlog import Cursor
from eventstore.postgres.lease_sql import AGENT_RESOURCES, DEQUEUE_AGENT, FENCE_REJECTIONS, KILL, REVIVE, WAIT_GRAPH
from eventstore.postgres.leasecommon import (
    agent_stream,
    bump_fence,
    lease_stream,
    lock_resource,
    notify_waiters,
    waited_event,
)
from eventstore.postgres.lockchain import LockLog


def wait_graph(cur: Cursor, stale_after: float) -> tuple[list[Holder], list[Waiter]]:
    """Live holders and waiters of every resource, from one snapshot, for the wait-for graph."""
    cur.execute(WAIT_GRAPH, (stale_after,))
    holders: list[Holder] = []
    waiters: list[Waiter] = []
    for kind, r, a, m, s, t in cur.fetchall():
        if kind == "h":
            holders.append(Holder(str(r), str(a), Mode(m)))
        else:
            waiters.append(Waiter(str(r), str(a), Mode(m), int(s), t))
    return holders, waiters


def mark_killed(cur: Cursor, agent_id: str, reason: str) -> None:
    """Step 1 of the kill switch: from its commit on, no grant succeeds and the projector rejects the
    agent's events. Grants in flight hold the agent row FOR SHARE, so this waits for them."""
    cur.execute(KILL, (agent_id, reason))


def revoke_all(cur: Cursor, agent_id: str, reason: str, killed: bool) -> list[tuple[str, int, int]]:
    """Step 2 of the kill switch: revoke every lease and wait of the agent at once, fencing each token.
    Returns (resource, revoked token, new fence token) per revoked lease."""
    log = LockLog()
    cur.execute(AGENT_RESOURCES, (agent_id, agent_id))
    resources = sorted({str(r[0]) for r in cur.fetchall()}, key=lambda r: (key_of(r), r))
    for r in resources:
        lock_resource(cur, r)
    revoked: list[tuple[str, int, int]] = []
    if resources:
        cur.execute(DEQUEUE_AGENT, (agent_id,))
        for r, *wait in sorted(cur.fetchall(), key=lambda w: (str(w[0]), int(w[3]))):
            log.add(lease_stream(str(r)), waited_event(str(r), wait, "revoked"), agent_id)
        cur.execute("DELETE FROM lease_holders WHERE agent_id = %s RETURNING resource, token", (agent_id,))
        for r, t in sorted(cur.fetchall()):
            fence = bump_fence(cur, str(r))
            notify_waiters(cur, str(r))
            revoked.append((str(r), int(t), fence))
            log.add(lease_stream(str(r)), ev.LeaseRevoked(
                resource=str(r), agent_id=agent_id, token=int(t), fence_token=fence, reason=reason),
                agent_id, str(r), int(t))
    if killed:
        log.add(agent_stream(agent_id), ev.AgentKilled(
            agent_id=agent_id, reason=reason, revoked=[r for r, _, _ in revoked]), agent_id)
    log.append(cur)
    return revoked


def revive(cur: Cursor, agent_id: str) -> bool:
    """Mark the agent active again and record it; False if it was never known."""
    cur.execute(REVIVE, (agent_id,))
    if cur.fetchone() is None:
        return False
    log = LockLog()
    log.add(agent_stream(agent_id), ev.AgentRevived(agent_id=agent_id), agent_id)
    log.append(cur)
    return True


def fence_rejections(cur: Cursor) -> dict[str, int]:
    """Events the projector refused for a stale or never-granted lease token, per agent."""
    cur.execute(FENCE_REJECTIONS)
    return {str(a): int(n) for a, n in cur.fetchall()}


def holders_of(cur: Cursor, resources: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Current holders (for operators and tests), optionally limited to some resources."""
    sql = ("SELECT resource, agent_id, mode, token, hold_count, granted_at, expires_at, "
           "expires_at <= clock_timestamp() FROM lease_holders")
    params: tuple[Any, ...] = ()
    if resources is not None:
        sql += " WHERE resource = ANY(%s)"
        params = (list(resources),)
    cur.execute(sql + " ORDER BY resource, agent_id", params)
    keys = ("resource", "agent_id", "mode", "token", "hold_count", "granted_at", "expires_at", "expired")
    return [dict(zip(keys, row, strict=True)) for row in cur.fetchall()]
