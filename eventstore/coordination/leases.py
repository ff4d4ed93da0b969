"""The PostgreSQL adapter of the coordinator: one function per short transaction step.

Each function runs inside the caller's transaction and appends the lock event it causes in that same
transaction, so state and history never disagree. Lock order, shared with the projector: the
resource's advisory lock (namespace ``ADVISORY_NS``) -> lease tables -> agents -> resources ->
streams -> log_head. Every transaction that changes a resource's lease state holds that resource's
advisory lock, so grants, releases, expiries and revocations of one resource are serialised and the
fencing tokens they hand out increase in commit order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from eventstore.coordination import events as ev
from eventstore.coordination.rules import Holder, Mode, Waiter, key_of, may_grant, wait_exceeded
from eventstore.errors import AgentKilledError, CoordinationError, EventStoreError, LeaseNotHeldError
from eventstore.eventlog import Cursor, DirectEvent, append_direct
from eventstore.events import Event

ADVISORY_NS = 0x4C45  # "LE": keeps our keys apart from applications' own advisory locks

LOCK = "SELECT pg_advisory_xact_lock(%s, %s)"
EXPIRE = """
WITH purged AS (
    DELETE FROM lease_waiters WHERE resource = %(r)s
       AND heartbeat_at < clock_timestamp() - make_interval(secs => %(stale)s)
)
DELETE FROM lease_holders WHERE resource = %(r)s AND expires_at <= clock_timestamp()
RETURNING agent_id, token, extract(epoch FROM clock_timestamp() - granted_at)::float8
"""
AGENT_STATUS = "SELECT status, reason FROM agents WHERE agent_id = %s FOR SHARE"
ENSURE_AGENT = "INSERT INTO agents (agent_id) VALUES (%s) ON CONFLICT (agent_id) DO NOTHING"
BUMP_FENCE = """
INSERT INTO resources (resource, fence_token) VALUES (%s, nextval('fencing_tokens'))
ON CONFLICT (resource) DO UPDATE SET fence_token = GREATEST(resources.fence_token, EXCLUDED.fence_token)
RETURNING fence_token
"""
FENCE = "SELECT fence_token FROM resources WHERE resource = %s"
HOLDERS = "SELECT agent_id, mode, token FROM lease_holders WHERE resource = %s"
QUEUE = "SELECT agent_id, mode, seq, enqueued_at FROM lease_waiters WHERE resource = %s ORDER BY seq"
HELD_BY_AGENT = "SELECT resource FROM lease_holders WHERE agent_id = %s AND expires_at > clock_timestamp()"
REENTER = """
UPDATE lease_holders SET hold_count = hold_count + 1,
       expires_at = GREATEST(expires_at, clock_timestamp() + make_interval(secs => %s))
WHERE resource = %s AND agent_id = %s RETURNING token, mode, expires_at
"""
INSERT_HOLDER = """
INSERT INTO lease_holders (resource, agent_id, mode, token, ttl_seconds, granted_at, expires_at)
VALUES (%s, %s, %s, %s, %s, clock_timestamp(), clock_timestamp() + make_interval(secs => %s))
RETURNING expires_at
"""
DEQUEUE = """
DELETE FROM lease_waiters WHERE resource = %s AND agent_id = %s
RETURNING extract(epoch FROM clock_timestamp() - enqueued_at)::float8
"""
ENQUEUE = """
INSERT INTO lease_waiters (resource, agent_id, mode, enqueued_at, heartbeat_at, expected_seconds)
VALUES (%s, %s, %s, clock_timestamp(), clock_timestamp(), %s)
ON CONFLICT (resource, agent_id) DO UPDATE SET heartbeat_at = clock_timestamp()
RETURNING (xmax = 0), extract(epoch FROM clock_timestamp() - enqueued_at)::float8, alerted, expected_seconds
"""
MARK_ALERTED = "UPDATE lease_waiters SET alerted = true WHERE resource = %s AND agent_id = %s"
RELEASE_ROW = """
SELECT token, hold_count, expires_at > clock_timestamp(),
       extract(epoch FROM clock_timestamp() - granted_at)::float8
FROM lease_holders WHERE resource = %s AND agent_id = %s FOR UPDATE
"""
DROP_HOLDER = "DELETE FROM lease_holders WHERE resource = %s AND agent_id = %s"
DECREMENT = "UPDATE lease_holders SET hold_count = hold_count - 1 WHERE resource = %s AND agent_id = %s"
RENEW = """
UPDATE lease_holders SET expires_at = clock_timestamp() + make_interval(secs => %s), ttl_seconds = %s
WHERE resource = %s AND agent_id = %s AND token = %s AND expires_at > clock_timestamp()
RETURNING expires_at
"""
GRAPH_HOLDERS = "SELECT resource, agent_id, mode FROM lease_holders WHERE expires_at > clock_timestamp()"
GRAPH_WAITERS = """
SELECT resource, agent_id, mode, seq, enqueued_at FROM lease_waiters
WHERE heartbeat_at >= clock_timestamp() - make_interval(secs => %s)
"""
AGENT_RESOURCES = """
SELECT resource FROM lease_holders WHERE agent_id = %s
UNION SELECT resource FROM lease_waiters WHERE agent_id = %s
"""
KILL = """
INSERT INTO agents (agent_id, status, reason, changed_at) VALUES (%s, 'killed', %s, now())
ON CONFLICT (agent_id) DO UPDATE SET status = 'killed', reason = EXCLUDED.reason, changed_at = now()
"""
REVIVE = (
    "UPDATE agents SET status = 'active', reason = NULL, changed_at = now() WHERE agent_id = %s RETURNING 1"
)
FENCE_REJECTIONS = """
SELECT agent_id, count(*) FROM outcomes
WHERE status = 'rejected' AND (reason LIKE 'stale lease%%' OR reason LIKE 'lease token%%')
GROUP BY agent_id
"""


def lease_stream(resource: str) -> str:
    """The stream that holds a resource's lock history."""
    return f"lease-{resource}"


def agent_stream(agent_id: str) -> str:
    """The stream that holds an agent's kill-switch and lock-order history."""
    return f"agent-{agent_id}"


@dataclass(frozen=True)
class Grant:
    """A granted (or re-entered) lease as the database recorded it."""

    resource: str
    agent_id: str
    mode: Mode
    token: int
    expires_at: datetime
    waited_seconds: float = 0.0
    reentered: bool = False


@dataclass(frozen=True)
class Expiry:
    """A holder whose TTL ran out and was fenced during some step."""

    resource: str
    agent_id: str
    token: int
    held_seconds: float


@dataclass
class StepResult:
    """What one attempt decided. ``error`` is raised by the caller after the commit, so the event
    that explains it (denial, violation) is durable."""

    grant: Grant | None = None
    held_by: list[str] = field(default_factory=list)
    newly_queued: bool = False
    waited_seconds: float = 0.0
    alert: ev.WaitExceeded | None = None
    expired: list[Expiry] = field(default_factory=list)
    error: EventStoreError | None = None


def _record(cur: Cursor, stream: str, event: Event, agent_id: str, resource: str | None = None,
            token: int | None = None) -> None:
    append_direct(cur, [DirectEvent(stream=stream, event=event, agent_id=agent_id,
                                    lease_resource=resource, fencing_token=token)])


def _lock(cur: Cursor, resource: str) -> None:
    cur.execute(LOCK, (ADVISORY_NS, key_of(resource)))


def _bump(cur: Cursor, resource: str) -> int:
    cur.execute(BUMP_FENCE, (resource,))
    row = cur.fetchone()
    assert row is not None
    return int(row[0])


def _expire(cur: Cursor, resource: str, stale_after: float) -> list[Expiry]:
    """Remove expired holders and abandoned waiters of a resource; fence and record the expiries."""
    cur.execute(EXPIRE, {"r": resource, "stale": stale_after})
    gone = [Expiry(resource, str(a), int(t), float(s)) for a, t, s in cur.fetchall()]
    if gone:
        fence = _bump(cur, resource)
        for g in gone:
            _record(cur, lease_stream(resource), ev.LeaseExpired(
                resource=resource, agent_id=g.agent_id, token=g.token, fence_token=fence),
                g.agent_id, resource, g.token)
    return gone


def _agent_killed(cur: Cursor, agent_id: str) -> str | None:
    """The kill reason if the agent is killed; locks its row FOR SHARE so a kill waits for this step."""
    cur.execute(AGENT_STATUS, (agent_id,))
    row = cur.fetchone()
    if row is None:
        cur.execute(ENSURE_AGENT, (agent_id,))
        cur.execute(AGENT_STATUS, (agent_id,))
        row = cur.fetchone()
    if row is not None and row[0] == "killed":
        return str(row[1] or "no reason given")
    return None


def check_order(cur: Cursor, agent_id: str, requested: str,
                violation_of: Callable[[str, list[str]], str | None]) -> str | None:
    """The held resource that ``requested`` would violate the global order against, recorded as
    LockOrderViolated; ``violation_of(requested, held)`` is the pure rule."""
    cur.execute(HELD_BY_AGENT, (agent_id,))
    held = [str(r[0]) for r in cur.fetchall()]
    later = violation_of(requested, held)
    if later is not None:
        _record(cur, agent_stream(agent_id), ev.LockOrderViolated(
            agent_id=agent_id, requested=requested, held=later), agent_id)
    return later


def attempt(cur: Cursor, resource: str, agent_id: str, mode: Mode, ttl: float, *, queue: bool,
            expected: float | None, stale_after: float) -> StepResult:
    """One try to get a lease: grant it, re-enter it, or (if ``queue``) keep a place in the FIFO queue."""
    _lock(cur, resource)
    expired = _expire(cur, resource, stale_after)
    reason = _agent_killed(cur, agent_id)
    if reason is not None:
        cur.execute(DEQUEUE, (resource, agent_id))
        return StepResult(expired=expired, error=AgentKilledError(
            f"agent {agent_id!r} was stopped by the kill switch ({reason}); an operator must revive it"))
    cur.execute(HOLDERS, (resource,))
    rows = cur.fetchall()
    holders = [Holder(resource, str(a), Mode(m)) for a, m, _ in rows]
    mine = [h for h in holders if h.agent_id == agent_id]
    if mine:
        if mine[0].mode is Mode.SHARED and mode is Mode.EXCLUSIVE:
            return StepResult(expired=expired, error=CoordinationError(
                f"agent {agent_id!r} holds a shared lease on {resource!r} and asked for an exclusive one; "
                "upgrades are not supported (they deadlock): release the shared lease first"))
        cur.execute(REENTER, (ttl, resource, agent_id))
        tok, held_mode, expires_at = cur.fetchone()  # type: ignore[misc]
        return StepResult(expired=expired, grant=Grant(resource, agent_id, Mode(held_mode), int(tok),
                                                       expires_at, reentered=True))
    cur.execute(QUEUE, (resource,))
    waiters = [Waiter(resource, str(a), Mode(m), int(s), t) for a, m, s, t in cur.fetchall()]
    others = sorted({h.agent_id for h in holders})
    if may_grant(agent_id, mode, holders, waiters):
        token: int | None = None
        if holders:  # joining a shared group: share its token unless it was fenced meanwhile
            cur.execute(FENCE, (resource,))
            fence = cur.fetchone()
            if fence is not None and all(int(t) == int(fence[0]) for _, _, t in rows):
                token = int(fence[0])
        if token is None:
            token = _bump(cur, resource)
        cur.execute(INSERT_HOLDER, (resource, agent_id, mode.value, token, ttl, ttl))
        (expires_at,) = cur.fetchone()  # type: ignore[misc]
        cur.execute(DEQUEUE, (resource, agent_id))
        q = cur.fetchone()
        waited = float(q[0]) if q else 0.0
        _record(cur, lease_stream(resource), ev.LeaseGranted(
            resource=resource, agent_id=agent_id, mode=mode.value, token=token, ttl_seconds=ttl,
            waited_seconds=waited), agent_id, resource, token)
        return StepResult(expired=expired, grant=Grant(resource, agent_id, mode, token, expires_at, waited))
    held_by = others or sorted({w.agent_id for w in waiters if w.agent_id != agent_id})
    if not queue:
        _record(cur, lease_stream(resource), ev.LeaseDenied(
            resource=resource, agent_id=agent_id, mode=mode.value, reason="busy", held_by=held_by), agent_id)
        return StepResult(expired=expired, held_by=held_by)
    cur.execute(ENQUEUE, (resource, agent_id, mode.value, expected))
    inserted, waited, alerted, expected_db = cur.fetchone()  # type: ignore[misc]
    result = StepResult(expired=expired, held_by=held_by, newly_queued=bool(inserted),
                        waited_seconds=float(waited))
    if inserted:
        _record(cur, lease_stream(resource), ev.LeaseWaited(
            resource=resource, agent_id=agent_id, mode=mode.value, held_by=held_by,
            expected_seconds=expected), agent_id)
    if wait_exceeded(float(waited), expected_db, bool(alerted)):
        cur.execute(MARK_ALERTED, (resource, agent_id))
        result.alert = ev.WaitExceeded(resource=resource, agent_id=agent_id, waited_seconds=float(waited),
                                       expected_seconds=float(expected_db), held_by=held_by)
        _record(cur, lease_stream(resource), result.alert, agent_id)
    return result


def leave_queue(cur: Cursor, resource: str, agent_id: str, mode: Mode, reason: str,
                deadlock: ev.DeadlockFound | None = None) -> float | None:
    """Give up waiting (timeout, deadlock victim, interruption): remove the queue entry and record why.
    Returns how long it waited, or None if it was not queued."""
    _lock(cur, resource)
    cur.execute(DEQUEUE, (resource, agent_id))
    row = cur.fetchone()
    if row is None:
        return None
    if deadlock is not None:
        _record(cur, lease_stream(resource), deadlock, agent_id)
    cur.execute(HOLDERS, (resource,))
    held_by = sorted({str(a) for a, _, _ in cur.fetchall()})
    _record(cur, lease_stream(resource), ev.LeaseDenied(
        resource=resource, agent_id=agent_id, mode=mode.value, reason=reason, held_by=held_by), agent_id)
    return float(row[0])


def release(cur: Cursor, resource: str, agent_id: str, token: int) -> tuple[float | None, Expiry | None]:
    """Release one hold. Returns (held seconds if the lease is now free of this agent, expiry if it had
    expired). Raises LeaseNotHeldError if the agent does not hold this grant."""
    _lock(cur, resource)
    cur.execute(RELEASE_ROW, (resource, agent_id))
    row = cur.fetchone()
    if row is None or int(row[0]) != token:
        raise LeaseNotHeldError(
            f"agent {agent_id!r} does not hold the lease on {resource!r} with token {token} "
            "(it expired and was taken over, was revoked, or was never granted)")
    count, alive, held = int(row[1]), bool(row[2]), float(row[3])
    if not alive:
        cur.execute(DROP_HOLDER, (resource, agent_id))
        fence = _bump(cur, resource)
        _record(cur, lease_stream(resource), ev.LeaseExpired(
            resource=resource, agent_id=agent_id, token=token, fence_token=fence), agent_id, resource, token)
        return None, Expiry(resource, agent_id, token, held)
    if count > 1:
        cur.execute(DECREMENT, (resource, agent_id))
        return None, None
    cur.execute(DROP_HOLDER, (resource, agent_id))
    _record(cur, lease_stream(resource), ev.LeaseReleased(
        resource=resource, agent_id=agent_id, token=token, held_seconds=held), agent_id, resource, token)
    return held, None


def renew(cur: Cursor, resource: str, agent_id: str, token: int, ttl: float) -> datetime:
    """Extend a live lease by ``ttl`` from now (database clock); LeaseNotHeldError if it is gone."""
    cur.execute(RENEW, (ttl, ttl, resource, agent_id, token))
    row = cur.fetchone()
    if row is None:
        raise LeaseNotHeldError(
            f"agent {agent_id!r} cannot renew {resource!r} token {token}: the lease expired or was revoked")
    _record(cur, lease_stream(resource), ev.LeaseRenewed(
        resource=resource, agent_id=agent_id, token=token, ttl_seconds=ttl), agent_id, resource, token)
    return row[0]  # type: ignore[no-any-return]


def wait_graph(cur: Cursor, stale_after: float) -> tuple[list[Holder], list[Waiter]]:
    """Live holders and waiters of every resource, for the wait-for graph."""
    cur.execute(GRAPH_HOLDERS)
    holders = [Holder(str(r), str(a), Mode(m)) for r, a, m in cur.fetchall()]
    cur.execute(GRAPH_WAITERS, (stale_after,))
    waiters = [Waiter(str(r), str(a), Mode(m), int(s), t) for r, a, m, s, t in cur.fetchall()]
    return holders, waiters


def mark_killed(cur: Cursor, agent_id: str, reason: str) -> None:
    """Step 1 of the kill switch: from its commit on, no grant succeeds and the projector rejects the
    agent's events. Grants in flight hold the agent row FOR SHARE, so this waits for them."""
    cur.execute(KILL, (agent_id, reason))


def revoke_all(cur: Cursor, agent_id: str, reason: str, killed: bool) -> list[tuple[str, int, int]]:
    """Step 2 of the kill switch: revoke every lease and wait of the agent at once, fencing each token.
    Returns (resource, revoked token, new fence token) per revoked lease."""
    cur.execute(AGENT_RESOURCES, (agent_id, agent_id))
    resources = sorted({str(r[0]) for r in cur.fetchall()}, key=lambda r: (key_of(r), r))
    for r in resources:
        _lock(cur, r)
    revoked: list[tuple[str, int, int]] = []
    if resources:
        cur.execute("DELETE FROM lease_waiters WHERE agent_id = %s", (agent_id,))
        cur.execute("DELETE FROM lease_holders WHERE agent_id = %s RETURNING resource, token", (agent_id,))
        for r, t in sorted(cur.fetchall()):
            fence = _bump(cur, str(r))
            revoked.append((str(r), int(t), fence))
            _record(cur, lease_stream(str(r)), ev.LeaseRevoked(
                resource=str(r), agent_id=agent_id, token=int(t), fence_token=fence, reason=reason),
                agent_id, str(r), int(t))
    if killed:
        _record(cur, agent_stream(agent_id), ev.AgentKilled(
            agent_id=agent_id, reason=reason, revoked=[r for r, _, _ in revoked]), agent_id)
    return revoked


def revive(cur: Cursor, agent_id: str) -> bool:
    """Mark the agent active again and record it; False if it was never known."""
    cur.execute(REVIVE, (agent_id,))
    if cur.fetchone() is None:
        return False
    _record(cur, agent_stream(agent_id), ev.AgentRevived(agent_id=agent_id), agent_id)
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
