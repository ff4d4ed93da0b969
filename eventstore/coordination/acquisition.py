"""A granted lease, and one lease request in progress (polled by the sync and asyncio APIs)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, TypeVar

from eventstore.coordination.alerts import Alerter
from eventstore.coordination.metrics import LeaseMetrics
from eventstore.coordination.wakeup import Wake, Wakeups
from eventstore.core import lockevents as ev
from eventstore.core import lockrules as rules
from eventstore.core.errors import DeadlockDetected, LeaseNotHeldError, LeaseTimeout, LockOrderViolation
from eventstore.core.lockrules import Mode
from eventstore.core.records import LeaseRef
from eventstore.postgres import leaseadmin as lease_admin
from eventstore.postgres import leaserelease
from eventstore.postgres import leases as lease_store
from eventstore.postgres.eventlog import Cursor

log = logging.getLogger("eventstore.coordination")
T = TypeVar("T")


class LeaseHost(Protocol):
    """What a Lease and an Acquisition need from the coordinator that made them (the Coordinator
    implements it); declared here so that this module does not import the coordinator."""

    rank: rules.OrderKey
    enforce_lock_order: bool
    detect_interval: float
    stale_waiter_after: float
    metrics: LeaseMetrics
    alerter: Alerter
    wakeups: Wakeups
    contended: dict[str, float]  # resource -> time.monotonic() when a request of this process last queued

    def run_step(self, fn: Callable[[Cursor], T], attempts: int = 5) -> T: ...

    def run_step_then_read(self, send: Callable[[Cursor], Callable[[], T]], attempts: int = 5) -> T: ...

    def run_call(self, fn: Callable[[Cursor], T], attempts: int = 5) -> T: ...

    def notice_key(self) -> bytes | None: ...

    def renew(self, lease: Lease, ttl: float | None = None) -> datetime: ...

    def release(self, lease: Lease) -> None: ...

VICTIM_RULE = (
    "youngest waiter in the cycle (latest enqueued_at on the database clock); ties: greatest agent id"
)


@dataclass(eq=False)
class Lease:
    """A granted lease. Pass it (or ``lease.ref``) with events written under it; the token fences
    them against later holders. Re-entrant grants to the same agent share the token."""

    coordinator: LeaseHost
    resource: str
    agent_id: str
    mode: Mode
    token: int
    expires_at: datetime
    ttl: float
    released: bool = False
    lost: bool = False
    # time.perf_counter() when a release's hand-off notification reached this process, if it came so.
    handed_at: float | None = None
    _keeper: threading.Thread | None = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def ref(self) -> LeaseRef:
        """The envelope form of this lease, checked by the projector against the newest grant."""
        return LeaseRef(resource=self.resource, token=self.token)

    def renew(self, ttl: float | None = None) -> datetime:
        """Extend the lease by ``ttl`` (default: its own TTL) from now on the database clock."""
        return self.coordinator.renew(self, ttl)

    def release(self) -> None:
        """Release this hold (one level of re-entry)."""
        self.coordinator.release(self)

    def keep_alive(self, interval: float | None = None) -> None:
        """Renew in a daemon thread every ``interval`` (default a third of the TTL) until released;
        if a renewal finds the lease gone, ``lost`` becomes True and the thread stops."""
        if self._keeper is not None:
            return
        every = interval if interval is not None else max(self.ttl / 3.0, 0.05)

        def run() -> None:
            while not self._stop.wait(every):
                try:
                    self.renew()
                except LeaseNotHeldError:
                    self.lost = True
                    log.warning("keep-alive: lease on %r of %r was lost", self.resource, self.agent_id)
                    return
                except Exception as e:  # keep trying on transient trouble; the TTL is the backstop
                    log.warning("keep-alive renewal of %r failed: %s", self.resource, e)

        self._keeper = threading.Thread(target=run, name=f"lease-keepalive-{self.resource}", daemon=True)
        self._keeper.start()

    def stop_keeper(self) -> None:
        self._stop.set()
        if self._keeper is not None and self._keeper is not threading.current_thread():
            self._keeper.join(timeout=5)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if self.released:
            return
        try:
            self.release()
        except LeaseNotHeldError as e:
            if exc_type is None:
                raise
            log.warning("lease lost while the block was failing: %s", e)  # keep the block's own error


class Acquisition:
    """One request in progress: ``step()`` polls once and returns the Lease, None (refused without
    waiting), or the seconds to sleep before the next poll. Shared by the sync and asyncio APIs."""

    def __init__(self, coord: LeaseHost, resource: str, agent_id: str, mode: Mode, ttl: float,
                 wait: float, expected: float | None) -> None:
        self.c, self.resource, self.agent_id, self.mode = coord, resource, agent_id, mode
        self.ttl, self.wait, self.expected = ttl, wait, expected
        self.deadline = time.monotonic() + wait
        self.polls = 0
        self.queued = False
        self.queue_seq: int | None = None  # this request's queue place (lease_waiters.seq), when known
        self.last_detect = time.monotonic()
        self.wake: Wake | None = None
        # Set by a caller that sleeps with ``sleep()`` (cut short by wake-ups); the asyncio API polls.
        self.follows_wakeups = False

    def step(self) -> Lease | float | None:
        if (handed := self._handed()) is not None:
            return handed
        first = self.polls == 0
        self.polls += 1
        if self.wake is None and self.wait > 0:
            # Before the first poll: a release that commits right after it queues us is not missed.
            self.wake = self.c.wakeups.register(self.resource, self.agent_id)
        # The one-call grant is worth trying first on the first poll and after a wake-up (likely the head
        # of the queue now); a backoff poll is rarely granted and goes straight to the full step.
        fast = first or (self.wake is not None and self.wake.is_set())
        if self.wake is not None:
            self.wake.clear()  # a release committed after this point sets it again
        res = self._poll(first, fast)
        c, r, a = self.c, self.resource, self.agent_id
        for x in res.expired:
            c.metrics.expired(x.resource, x.agent_id)
        if res.error is not None:
            if isinstance(res.error, LockOrderViolation):
                c.metrics.order_violation(r, a)
            raise res.error
        if res.grant is not None:
            g = res.grant
            if not g.reentered:
                c.metrics.granted(r, a, g.waited_seconds, self.queued)
            return Lease(c, r, a, g.mode, g.token, g.expires_at, self.ttl)
        if self.wait <= 0:
            c.metrics.denied(r, a)
            return None
        if res.newly_queued:
            self.queued = True
            self.queue_seq = res.queue_seq
            if len(c.contended) > 10_000:
                c.contended.clear()
            c.contended[r] = time.monotonic()
            c.metrics.waited(r, a)
        if res.alert is not None:
            c.metrics.wait_exceeded(r, a)
            c.alerter.send(res.alert)
        now = time.monotonic()
        if now - self.last_detect >= c.detect_interval:
            self.last_detect = now
            self._detect()
        if now >= self.deadline:
            if (handed := self._handed()) is not None:  # handed to us before we gave up: take it
                return handed
            self.abandon(f"wait of {self.wait:g}s ran out")
            c.metrics.denied(r, a)
            raise LeaseTimeout(
                f"agent {a!r} could not get {self.mode.value} lease on {r!r} within {self.wait:g}s "
                f"(held by {', '.join(res.held_by) or 'nobody'})")
        # A release hands the lease to the head of the queue or wakes it (wakeup.py), and since 0010 it
        # sees a waiter that queued in the same instant (both hold the resource's advisory lock), so a
        # waiter that follows wake-ups while the listener listens polls only as a backstop (expiry,
        # deadlock detection, heartbeat): every detection interval from the start, not exponentially from
        # 5 ms. Early polls only took the advisory lock that the releases they wait for need.
        if self.follows_wakeups and c.wakeups.listening.is_set():
            delay = rules.backoff(30, cap=max(0.1, c.detect_interval))
        else:
            delay = rules.backoff(self.polls - 1, cap=0.1)
        return min(delay, max(self.deadline - now, 0.001))

    def _handed(self) -> Lease | None:
        """The lease a release handed to this request, if its notification has arrived. The release's
        transaction granted it and chained the grant, and the notice was sent at its commit. Any role may
        NOTIFY: the notice is believed as it stands only when it is signed with the coordinator's key and
        names this request's queue place (migration 0011); otherwise after one read, which writes nothing."""
        if self.wake is None or self.wake.grant is None:
            return None
        g, self.wake.grant = self.wake.grant, None
        r, a = self.resource, self.agent_id
        if g.authentic(self.c.notice_key(), self.queue_seq):
            expires_at: datetime | None = g.expires_at
        else:
            expires_at = self.c.run_call(lambda cur: leaserelease.send_check_handoff(cur, r, a, g.token)())
        if expires_at is None:
            log.warning("a notice handed %r token %d to %r, but the database holds no such hand-off "
                        "(forged, or revoked or expired meanwhile); polling instead", r, g.token, a)
            return None
        if not self.c.wakeups.claim(r, a, g.token, self):
            return None  # another request of the same agent in this process took it
        self.c.metrics.granted(r, a, g.waited_seconds, True)
        return Lease(self.c, r, a, self.mode, g.token, expires_at, self.ttl, handed_at=g.received_at)

    def _handoff_ok(self, token: int) -> bool:
        """May this request take, from the database, the hand-off with ``token`` (its notification was
        missed or came during the poll)? Only a request that queued, and only one request per agent in
        this process."""
        return self.queued and self.c.wakeups.claim(self.resource, self.agent_id, token, self)

    def _poll(self, first: bool, fast: bool) -> lease_store.StepResult:
        """One poll. The first one is one transaction (the one-call grant, then the one-call queueing, or
        the full step), so a request that is not granted takes its place in the queue as of that
        transaction: a request made later cannot slip in between (FIFO). Only when neither call decides
        (an expired holder or a stale waiter to clean up, another lease held whose order must be checked,
        the agent's first request, a shared request) does the full step run in a second transaction. A
        queued waiter woken by a release tries the one-call grant alone (one statement in autocommit mode),
        then if need be the full step."""
        if first and self.wait > 0 and self.mode is Mode.EXCLUSIVE:
            # One statement in autocommit mode (0011): granted, or queued by the one-call queueing; if
            # neither call decided (nothing written), the full step runs in a transaction of its own.
            decided = self.c.run_call(lambda cur: lease_store.send_first_request(
                cur, self.resource, self.agent_id, self.mode, self.ttl, self.c.enforce_lock_order,
                self.expected, self.c.stale_waiter_after)())
            if decided is not None:
                return decided
        if first and self.wait <= 0 and self.mode is Mode.EXCLUSIVE:
            # A try never queues, so nothing orders it against others: the one-call grant alone (one
            # statement in autocommit mode), else the full step in a transaction of its own.
            grant = self.c.run_call(lambda cur: lease_store.send_grant_free(
                cur, self.resource, self.agent_id, self.mode, self.ttl, self.c.enforce_lock_order)())
            if grant is not None:
                return lease_store.StepResult(grant=grant)
            return self.c.run_step(lambda cur: self._attempt(cur, first, fast=False))
        if first:
            return self.c.run_step(lambda cur: self._attempt(cur, first, fast=True))
        if fast:
            grant = self.c.run_call(lambda cur: lease_store.send_grant_free(
                cur, self.resource, self.agent_id, self.mode, self.ttl, check_order=False)())
            if grant is not None:
                return lease_store.StepResult(grant=grant)
        return self.c.run_step(lambda cur: self._attempt(cur, first, fast=False))

    def _attempt(self, cur: Cursor, first: bool, fast: bool = True) -> lease_store.StepResult:
        rank = self.c.rank

        def violation(requested: str, held: list[str]) -> str | None:
            return rules.order_violation(requested, held, rank)

        check = first and self.c.enforce_lock_order
        # A resource on which a request of this process queued within the last second is likely busy.
        prefetch = first and time.monotonic() - self.c.contended.get(self.resource, -1e9) < 1.0
        return lease_store.attempt(cur, self.resource, self.agent_id, self.mode, self.ttl, queue=self.wait > 0,
                          expected=self.expected, stale_after=self.c.stale_waiter_after,
                          violation_of=violation if check else None, fast=fast,
                          handoff_ok=None if first else self._handoff_ok, prefetch=prefetch)

    def _detect(self) -> None:
        """Look for a wait-for cycle through this agent; abort this request if it is the victim."""
        holders, waiters = self.c.run_step(lambda cur: lease_admin.wait_graph(cur, self.c.stale_waiter_after))
        cycle = rules.find_cycle(rules.wait_for_edges(holders, waiters), self.agent_id)
        if cycle is None:
            return
        since: dict[str, datetime] = {}
        for w in waiters:
            since[w.agent_id] = max(since.get(w.agent_id, w.enqueued_at), w.enqueued_at)
        victim = rules.choose_victim(cycle, since)
        if victim != self.agent_id:
            return
        found = ev.DeadlockFound(cycle=cycle, victim=victim, resource=self.resource, rule=VICTIM_RULE)
        self.abandon("deadlock victim", found)
        self.c.metrics.deadlock_victim(self.resource, self.agent_id)
        self.c.alerter.send(found)
        raise DeadlockDetected(
            f"agent {self.agent_id!r} waiting for {self.resource!r} is the victim of the wait-for cycle "
            f"{' -> '.join([*cycle, cycle[0]])} ({VICTIM_RULE}); release your leases and retry")

    def sleep(self, seconds: float) -> None:
        """Sleep until the next poll: the backoff, cut short when the resource is released."""
        if self.wake is None:
            time.sleep(seconds)
        else:
            self.wake.wait(seconds)

    def done(self) -> None:
        """Stop listening for releases of the resource."""
        if self.wake is not None:
            self.c.wakeups.unregister(self.resource, self.wake)
            self.wake = None

    def abandon(self, reason: str, deadlock: ev.DeadlockFound | None = None) -> None:
        """Leave the wait queue and record why (timeout, deadlock victim, cancellation)."""
        self.c.run_step(lambda cur: lease_store.leave_queue(
            cur, self.resource, self.agent_id, self.mode, reason, deadlock, stale_after=self.c.stale_waiter_after,
            handoff_ok=lambda token: self.c.wakeups.claim(self.resource, self.agent_id, token, self)))
