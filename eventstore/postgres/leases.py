"""The PostgreSQL adapter of the coordinator: one function per short transaction step; here the request
path (grant, re-entry, a hand-off taken, queueing, leaving the queue). The release and renewal steps are in
leaserelease.py, the snapshot a step reads in leasesnapshot.py, what the steps share in leasecommon.py.

Each function runs inside the caller's transaction and appends the lock events it causes in that same
transaction, so state and history never disagree. The events go to the lock chain (lockchain.py,
migration 0009), not the event log: a lease step never takes ``log_head``, so it never waits for the
projector's batches. Lock order: the resource's advisory lock (namespace ``ADVISORY_NS``) -> lease
tables -> agents -> resources -> the lock chain's head (taken by the step's one append, at its end).
Every transaction that hands out or bumps a fencing token (grant, expiry, revocation) holds that
resource's advisory lock, so those steps of one resource are serialised and the tokens increase in
commit order. A release takes it too (migration 0010): it may hand the lease to the head of the queue
in its own transaction (new token, LeaseReleased and LeaseGranted chained in that one commit), and under
the lock it also sees a waiter that queued in the same instant. A renew touches only the holder's own
row, whose row lock serialises it against a concurrent expiry, so it skips the advisory lock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from eventstore.core import lockevents as ev
from eventstore.core.errors import (
    AgentKilledError,
    CoordinationError,
    EventStoreError,
    LeaseNotHeldError,
    LockOrderViolation,
)
from eventstore.core.lockrules import Holder, Mode, key_of, may_grant, wait_exceeded
from eventstore.postgres.eventlog import Cursor
from eventstore.postgres.lease_sql import (
    ADVISORY_NS,
    AGENT_STATUS,
    DEQUEUE,
    ENQUEUE,
    ENSURE_AGENT,
    GRANT_FREE,
    GRANT_NEW,
    GRANT_SHARED,
    HANDED_OFF,
    HEARTBEAT,
    HOLDERS,
    LOCK_AGENT_EARLY,
    MARK_ALERTED,
    REENTER,
    REQUEST,
    SNAPSHOT,
    TAKE_HANDOFF,
)
from eventstore.postgres.leasecommon import (
    agent_stream,
    bump_fence,
    lease_stream,
    lock_resource,
    notify_waiters,
    waited_event,
)
from eventstore.postgres.leaserelease import send_release_fast
from eventstore.postgres.leasesnapshot import Expiry, Snapshot, read_snapshot, snapshot
from eventstore.postgres.lockchain import LockLog


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
    handed_off: bool = False  # granted by a release's hand-off, found by this poll


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
    queue_seq: int | None = None  # the queue place taken (lease_waiters.seq), when known


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


def attempt(cur: Cursor, resource: str, agent_id: str, mode: Mode, ttl: float, *, queue: bool,
            expected: float | None, stale_after: float,
            violation_of: Callable[[str, list[str]], str | None] | None = None, fast: bool = True,
            handoff_ok: Callable[[int], bool] | None = None, prefetch: bool = False) -> StepResult:
    """One try to get a lease: grant it, re-enter it, take the lease a release handed to it, or (if
    ``queue``) keep a place in the FIFO queue.

    With ``violation_of`` (the pure lock-order rule) the request is first checked against the other
    resources the agent holds; a violation is recorded and returned as the error. With ``fast`` the
    common grant (a free resource, or the agent at the head of its queue, no other lease to check the
    order against) is tried first in one call (``GRANT_FREE``); anything else runs the full step after
    it, in the same transaction. Pollers that are unlikely to be granted pass ``fast=False``.

    ``handoff_ok`` is given by a request that has queued: when the agent holds the resource by a hand-off
    it has not taken yet (migration 0010) and ``handoff_ok(token)`` agrees (the hand-off was not already
    taken in this process), that hold is the grant of this request, not a re-entry.

    With ``prefetch`` (and ``fast``) the full step's locks and snapshot are sent together with the one-call
    grant, in one round trip, and the snapshot is dropped if it granted: a request that is likely to be
    queued (its resource was contended a moment ago) then holds the resource's advisory lock for one
    round trip less, and that lock is what the release it waits for needs.
    """
    snap: Snapshot | None = None
    if fast and prefetch:
        read_free = send_grant_free(cur, resource, agent_id, mode, ttl, violation_of is not None)
        with cur.connection.cursor() as more:
            lock_resource(more, resource)
            more.execute(LOCK_AGENT_EARLY, (agent_id,))
            more.execute(SNAPSHOT, {"r": resource, "a": agent_id, "stale": stale_after})
            free = read_free()
            snap = read_snapshot(more, resource)  # read either way: no result is left pending
        if free:
            if snap.purged:  # the snapshot's purge ended these waits in this transaction: chain them (0013)
                purged = LockLog()
                for wait in snap.purged:
                    purged.add(lease_stream(resource), wait, wait.agent_id)
                purged.append(cur)
            return StepResult(grant=free)
    elif fast and (free := send_grant_free(cur, resource, agent_id, mode, ttl, violation_of is not None)()):
        return StepResult(grant=free)
    log = LockLog()
    result = _attempt(cur, log, resource, agent_id, mode, ttl, queue=queue, expected=expected,
                      stale_after=stale_after, violation_of=violation_of, handoff_ok=handoff_ok, snap=snap)
    if result.newly_queued and not log.rows:
        # Only a queue row was written (no lock state, no lock event): its commit need not wait for the WAL
        # flush. A crash may lose it (the waiter queues again); a durable commit acting on it flushes past it.
        cur.execute("SET LOCAL synchronous_commit = off")
    log.append(cur)
    return result


def send_first_request(cur: Cursor, resource: str, agent_id: str, mode: Mode, ttl: float, check_order: bool,
                       expected: float | None, stale_after: float) -> Callable[[], StepResult | None]:
    """Send a first request as ONE statement (migration 0011): the one-call grant, else the one-call
    queueing, under the resource's advisory lock. The reader gives the grant, or the queued result with
    its queue place, or None when neither call decided and nothing was written (the full step then runs
    in a transaction of its own). Being one statement it can run in autocommit mode: one round trip, no
    BEGIN or COMMIT, and the advisory lock is held for no client round trip."""
    cur.execute(REQUEST, (resource, agent_id, mode.value, ttl, ADVISORY_NS, key_of(resource), check_order,
                          expected, stale_after))

    def read() -> StepResult | None:
        row = cur.fetchone()
        if row is None:
            return None
        token, expires_at, waited, held_by, seq = row
        if token is not None:
            return StepResult(grant=Grant(resource, agent_id, mode, int(token), expires_at, float(waited)))
        return StepResult(held_by=list(held_by), newly_queued=True, queue_seq=None if seq is None else int(seq))
    return read


def send_grant_free(cur: Cursor, resource: str, agent_id: str, mode: Mode, ttl: float,
                    check_order: bool) -> Callable[[], Grant | None]:
    """Send the one-call grant (a free resource, or the agent at the head of its queue; migration 0009);
    the returned reader gives the Grant, or None if the full step (``attempt``) must decide. Nothing is
    written when it does not grant, so a transaction of just this commits without a flush."""
    cur.execute(GRANT_FREE, (resource, agent_id, mode.value, ttl, ADVISORY_NS, key_of(resource), check_order))

    def read() -> Grant | None:
        row = cur.fetchone()
        if row is None:
            return None
        token, expires_at, waited = row
        return Grant(resource, agent_id, mode, int(token), expires_at, float(waited))
    return read


def _attempt(cur: Cursor, log: LockLog, resource: str, agent_id: str, mode: Mode, ttl: float, *, queue: bool,
             expected: float | None, stale_after: float,
             violation_of: Callable[[str, list[str]], str | None] | None,
             handoff_ok: Callable[[int], bool] | None = None, snap: Snapshot | None = None) -> StepResult:
    if snap is None:
        lock_resource(cur, resource)
        cur.execute(LOCK_AGENT_EARLY, (agent_id,))
        snap = snapshot(cur, resource, agent_id, stale_after)
    expired, rows, waiters, fence = snap.expired, snap.holders, snap.waiters, snap.fence
    if expired:
        fence = bump_fence(cur, resource)
        for g in expired:
            log.add(lease_stream(resource), ev.LeaseExpired(
                resource=resource, agent_id=g.agent_id, token=g.token, fence_token=fence),
                g.agent_id, resource, g.token)
        notify_waiters(cur, resource)
    for wait in snap.purged:  # abandoned waits (their agents stopped polling) end here
        log.add(lease_stream(resource), wait, wait.agent_id)
    if violation_of is not None and (later := violation_of(resource, snap.held_elsewhere)) is not None:
        log.add(agent_stream(agent_id), ev.LockOrderViolated(
            agent_id=agent_id, requested=resource, held=later), agent_id)
        return StepResult(expired=expired, error=LockOrderViolation(agent_id, resource, later))
    if snap.agent is None:
        reason = _agent_killed(cur, agent_id)  # first request of this agent: create its row
    else:
        reason = (snap.agent[1] or "no reason given") if snap.agent[0] == "killed" else None
    if reason is not None:
        cur.execute(DEQUEUE, (resource, agent_id))
        if (gone := cur.fetchone()) is not None:
            log.add(lease_stream(resource), waited_event(resource, gone, "killed"), agent_id)
        return StepResult(expired=expired, error=AgentKilledError(
            f"agent {agent_id!r} was stopped by the kill switch ({reason}); an operator must revive it"))
    holders = [Holder(resource, a, m) for a, m, _ in rows]
    mine = [h for h in holders if h.agent_id == agent_id]
    if mine and agent_id in snap.handed_off and handoff_ok is not None:
        token = next(t for a, _, t in rows if a == agent_id)
        if handoff_ok(token):
            cur.execute(TAKE_HANDOFF, (resource, agent_id))
            taken = cur.fetchone()
            if taken is not None:  # handed to this request by a release; the notification was missed
                tok, held_mode, expires_at, _age = taken
                return StepResult(expired=expired, grant=Grant(resource, agent_id, Mode(held_mode), int(tok),
                                                               expires_at, handed_off=True))
    if mine:
        if mine[0].mode is Mode.SHARED and mode is Mode.EXCLUSIVE:
            return StepResult(expired=expired, error=CoordinationError(
                f"agent {agent_id!r} holds a shared lease on {resource!r} and asked for an exclusive one; "
                "upgrades are not supported (they deadlock): release the shared lease first"))
        cur.execute(REENTER, (ttl, resource, agent_id))
        again = cur.fetchone()
        if again is None:  # revoked by a kill between the snapshot and now
            return StepResult(expired=expired, error=LeaseNotHeldError(
                f"the lease of {agent_id!r} on {resource!r} was revoked while it was re-entered"))
        tok, held_mode, expires_at = again
        return StepResult(expired=expired, grant=Grant(resource, agent_id, Mode(held_mode), int(tok),
                                                       expires_at, reentered=True))
    others = sorted({h.agent_id for h in holders})
    if may_grant(agent_id, mode, holders, waiters):
        # Joining a shared group shares its token, unless the group was fenced meanwhile.
        share = holders and fence is not None and all(t == fence for _, _, t in rows)
        cur.execute(GRANT_SHARED if share else GRANT_NEW,
                    {"r": resource, "a": agent_id, "m": mode.value, "ttl": ttl, "tok": fence})
        granted = cur.fetchone()
        if granted is None:  # killed between the snapshot and the grant
            return StepResult(expired=expired, error=AgentKilledError(
                f"agent {agent_id!r} was stopped by the kill switch; an operator must revive it"))
        token, expires_at, *wait = granted
        waited = 0.0
        if wait[0] is not None:  # the agent waited in the queue: its wait ends with this grant
            ended = waited_event(resource, wait, "granted")
            waited = float(ended.waited_seconds or 0.0)
            log.add(lease_stream(resource), ended, agent_id)
        token = int(token)
        log.add(lease_stream(resource), ev.LeaseGranted(
            resource=resource, agent_id=agent_id, mode=mode.value, token=token, ttl_seconds=ttl,
            waited_seconds=waited), agent_id, resource, token)
        return StepResult(expired=expired, grant=Grant(resource, agent_id, mode, token, expires_at, waited))
    held_by = others or sorted({w.agent_id for w in waiters if w.agent_id != agent_id})
    if not queue:
        log.add(lease_stream(resource), ev.LeaseDenied(
            resource=resource, agent_id=agent_id, mode=mode.value, reason="busy", held_by=held_by), agent_id)
        return StepResult(expired=expired, held_by=held_by)
    # Keep the place in the queue. Most polls only read: the heartbeat is refreshed when it is a quarter
    # of the way to stale, so a waiting poll rarely needs a WAL flush at commit.
    if snap.my_wait is None:
        # The queue row only: its LeaseWaited is chained when the wait ends (migration 0013).
        cur.execute(ENQUEUE, (resource, agent_id, mode.value, expected, ttl, held_by))
        row = cur.fetchone()
        queue_seq = None if row is None else int(row[0])
        waited, alerted, expected_db = 0.0, False, expected
    else:
        waited, alerted, expected_db, age = snap.my_wait
        queue_seq = None
        if age > stale_after / 4:
            cur.execute(HEARTBEAT, (resource, agent_id))
    result = StepResult(expired=expired, held_by=held_by, newly_queued=snap.my_wait is None,
                        waited_seconds=waited, queue_seq=queue_seq)
    if expected_db is not None and wait_exceeded(waited, expected_db, alerted):
        cur.execute(MARK_ALERTED, (resource, agent_id))
        result.alert = ev.WaitExceeded(resource=resource, agent_id=agent_id, waited_seconds=waited,
                                       expected_seconds=expected_db, held_by=held_by)
        log.add(lease_stream(resource), result.alert, agent_id)
    return result


def leave_queue(cur: Cursor, resource: str, agent_id: str, mode: Mode, reason: str,
                deadlock: ev.DeadlockFound | None = None, *, stale_after: float = 5.0,
                handoff_ok: Callable[[int], bool] | None = None) -> float | None:
    """Give up waiting (timeout, deadlock victim, interruption): remove the queue entry and record why.
    Returns how long it waited, or None if it was not queued. If a release handed the lease to this
    waiter before it gave up (and ``handoff_ok(token)``: not taken in this process), that lease is
    released here, handed on to the next waiter, so a waiter that walks away never keeps it."""
    log = LockLog()
    lock_resource(cur, resource)
    cur.execute(DEQUEUE, (resource, agent_id))
    row = cur.fetchone()
    if row is not None:  # the wait ends here: chained with why it ended, in this commit
        log.add(lease_stream(resource), waited_event(resource, row, "left"), agent_id)
    if row is None:
        cur.execute(HANDED_OFF, (resource, agent_id))
        handed = cur.fetchone()
        if handed is not None and (handoff_ok is None or handoff_ok(int(handed[0]))):
            send_release_fast(cur, resource, agent_id, int(handed[0]), stale_after)()
        return None
    if deadlock is not None:
        log.add(lease_stream(resource), deadlock, agent_id)
    notify_waiters(cur, resource)  # those queued behind may be grantable now
    cur.execute(HOLDERS, (resource,))
    held_by = sorted({str(a) for a, _, _ in cur.fetchall()})
    log.add(lease_stream(resource), ev.LeaseDenied(
        resource=resource, agent_id=agent_id, mode=mode.value, reason=reason, held_by=held_by), agent_id)
    log.append(cur)
    return float(row[6])
