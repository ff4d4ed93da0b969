"""The coordinator: durable leases in PostgreSQL with TTL, fencing tokens, FCFS waiting, a global lock
order, deadlock detection, wait-exceeded alerts and a kill switch.

Unlike an in-memory lock table, every decision is a short PostgreSQL transaction (see
:mod:`eventstore.coordination.leases`), so leases exclude across processes and survive restarts; time
(TTL, waits) is the database clock. A waiter polls with a small jittered backoff and, while it waits,
runs the deadlock detector itself, so no extra process is needed for a cycle to be found within
about ``detect_interval`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from psycopg_pool import ConnectionPool

from eventstore.coordination import events as ev
from eventstore.coordination import leases as db
from eventstore.coordination import rules
from eventstore.coordination.alerts import Alerter
from eventstore.coordination.metrics import LeaseMetrics
from eventstore.coordination.rules import Mode
from eventstore.coordination.wakeup import Wakeups
from eventstore.db import converted_errors
from eventstore.envelope import LeaseRef, check_name
from eventstore.errors import (
    ConfigurationError,
    DeadlockDetected,
    LeaseNotHeldError,
    LeaseTimeout,
    LockOrderViolation,
    TransientStorageError,
)
from eventstore.eventlog import Cursor
from eventstore.settings import Settings

log = logging.getLogger("eventstore.coordination")
T = TypeVar("T")

VICTIM_RULE = (
    "youngest waiter in the cycle (latest enqueued_at on the database clock); ties: greatest agent id"
)


@dataclass(eq=False)
class Lease:
    """A granted lease. Pass it (or ``lease.ref``) with events written under it; the token fences
    them against later holders. Re-entrant grants to the same agent share the token."""

    coordinator: Coordinator
    resource: str
    agent_id: str
    mode: Mode
    token: int
    expires_at: datetime
    ttl: float
    released: bool = False
    lost: bool = False
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

    def _stop_keeper(self) -> None:
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

    def __init__(self, coord: Coordinator, resource: str, agent_id: str, mode: Mode, ttl: float,
                 wait: float, expected: float | None) -> None:
        self.c, self.resource, self.agent_id, self.mode = coord, resource, agent_id, mode
        self.ttl, self.wait, self.expected = ttl, wait, expected
        self.deadline = time.monotonic() + wait
        self.polls = 0
        self.queued = False
        self.last_detect = time.monotonic()
        self.wake: threading.Event | None = None

    def step(self) -> Lease | float | None:
        first = self.polls == 0
        self.polls += 1
        if self.wake is not None:
            self.wake.clear()  # a release committed after this point sets it again
        res = self.c._tx(lambda cur: self._attempt(cur, first))
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
            c.metrics.waited(r, a)
        if self.wake is None:
            self.wake = c.wakeups.register(r)
        if res.alert is not None:
            c.metrics.wait_exceeded(r, a)
            c.alerter.send(res.alert)
        now = time.monotonic()
        if now - self.last_detect >= c.detect_interval:
            self.last_detect = now
            self._detect()
        if now >= self.deadline:
            self.abandon(f"wait of {self.wait:g}s ran out")
            c.metrics.denied(r, a)
            raise LeaseTimeout(
                f"agent {a!r} could not get {self.mode.value} lease on {r!r} within {self.wait:g}s "
                f"(held by {', '.join(res.held_by) or 'nobody'})")
        return min(rules.backoff(self.polls - 1), max(self.deadline - now, 0.001))

    def _attempt(self, cur: Cursor, first: bool) -> db.StepResult:
        rank = self.c.rank

        def violation(requested: str, held: list[str]) -> str | None:
            return rules.order_violation(requested, held, rank)

        check = first and self.c.enforce_lock_order
        return db.attempt(cur, self.resource, self.agent_id, self.mode, self.ttl, queue=self.wait > 0,
                          expected=self.expected, stale_after=self.c.stale_waiter_after,
                          violation_of=violation if check else None)

    def _detect(self) -> None:
        """Look for a wait-for cycle through this agent; abort this request if it is the victim."""
        holders, waiters = self.c._tx(lambda cur: db.wait_graph(cur, self.c.stale_waiter_after))
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
        self.c._tx(lambda cur: db.leave_queue(cur, self.resource, self.agent_id, self.mode, reason, deadlock))


class Coordinator:
    """Leases on named resources for agents in any process, stored in PostgreSQL.

    ``rank`` maps a resource id to its place in the global lock order (default: the id itself);
    ``enforce_lock_order`` makes out-of-order requests raise LockOrderViolation; ``alert_webhook``
    (default ``EVENTSTORE_ALERT_WEBHOOK``) receives deadlock and wait-exceeded alerts.
    """

    def __init__(self, settings: Settings | str | None = None, *, rank: rules.OrderKey | None = None,
                 enforce_lock_order: bool = True, alert_webhook: str | None = None,
                 detect_interval: float = 0.25, stale_waiter_after: float = 5.0, pool_size: int = 10,
                 pipeline: bool = False, synchronous_commit: bool = True) -> None:
        if settings is None:
            settings = Settings.from_env()
        url = settings if isinstance(settings, str) else settings.database_url
        if not url:
            raise ConfigurationError(
                "EVENTSTORE_DATABASE_URL is not set; the coordinator needs PostgreSQL "
                "(or run `eventstore dev`)"
            )
        self.rank: rules.OrderKey = rank or rules.default_rank
        self.enforce_lock_order = enforce_lock_order
        self.detect_interval = detect_interval
        self.stale_waiter_after = stale_waiter_after
        self.pipeline = pipeline
        self.synchronous_commit = synchronous_commit
        self.metrics = LeaseMetrics()
        self.alerter = Alerter(alert_webhook)
        self.wakeups = Wakeups(url)
        with converted_errors():
            self._pool: ConnectionPool[Any] = ConnectionPool(
                url, min_size=1, max_size=pool_size, open=True, name="eventstore-coordinator")

    def close(self) -> None:
        """Close the connection pool and the listener (held leases stay until released or expired)."""
        self.wakeups.close()
        self._pool.close()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tx(self, fn: Callable[[Cursor], T], attempts: int = 5) -> T:
        """Run ``fn`` in one transaction, retrying transient failures with a short backoff."""
        for i in range(attempts):
            try:
                with converted_errors(), self._pool.connection() as conn, conn.cursor() as cur:
                    if not self.synchronous_commit:
                        cur.execute("SET LOCAL synchronous_commit = off")
                    if not self.pipeline:
                        return fn(cur)
                    # Pipeline mode: statements whose results are not read yet travel together,
                    # the commit included.
                    with conn.pipeline():
                        result = fn(cur)
                        conn.commit()
                        return result
            except TransientStorageError:
                if i == attempts - 1:
                    raise
                time.sleep(rules.backoff(i, base=0.01, cap=0.2))
        raise AssertionError("unreachable")

    def acquisition(self, resource: str, *, agent_id: str, mode: Mode | str = Mode.EXCLUSIVE,
                    ttl: float = 30.0, wait: float = 10.0,
                    expected_duration: float | None = None) -> Acquisition:
        """A validated request, for callers that drive the polling themselves (the asyncio API)."""
        check_name("resource", resource)
        check_name("agent_id", agent_id)
        if ttl <= 0:
            raise ConfigurationError(f"ttl must be positive, got {ttl}")
        if wait < 0:
            raise ConfigurationError(f"wait must not be negative, got {wait}")
        if expected_duration is not None and expected_duration <= 0:
            raise ConfigurationError(f"expected_duration must be positive, got {expected_duration}")
        return Acquisition(self, resource, agent_id, Mode(mode), float(ttl), float(wait), expected_duration)

    def acquire(self, resource: str, *, agent_id: str, mode: Mode | str = Mode.EXCLUSIVE,
                ttl: float = 30.0, wait: float = 10.0, expected_duration: float | None = None,
                keep_alive: bool = False) -> Lease:
        """Take a lease, waiting up to ``wait`` seconds in FCFS order; LeaseTimeout if it stays busy."""
        acq = self.acquisition(resource, agent_id=agent_id, mode=mode, ttl=ttl, wait=wait,
                               expected_duration=expected_duration)
        try:
            while True:
                r = acq.step()
                if isinstance(r, Lease):
                    if keep_alive:
                        r.keep_alive()
                    return r
                if r is None:
                    raise LeaseTimeout(f"{resource!r} is busy and wait=0 was given; use try_acquire()")
                acq.sleep(r)
        except BaseException as e:
            if acq.queued and isinstance(e, KeyboardInterrupt | SystemExit):
                acq.abandon("interrupted")
            raise
        finally:
            acq.done()

    def try_acquire(self, resource: str, *, agent_id: str, mode: Mode | str = Mode.EXCLUSIVE,
                    ttl: float = 30.0) -> Lease | None:
        """Take the lease if it is free now, else return None (recorded as a denial); never queues."""
        r = self.acquisition(resource, agent_id=agent_id, mode=mode, ttl=ttl, wait=0).step()
        assert not isinstance(r, float)
        return r

    @contextmanager
    def lease(self, resource: str, *, agent_id: str, mode: Mode | str = Mode.EXCLUSIVE, ttl: float = 30.0,
              wait: float = 10.0, expected_duration: float | None = None,
              keep_alive: bool = False) -> Iterator[Lease]:
        """``with coord.lease(...) as lease:``: acquire, yield, release (also on error)."""
        held = self.acquire(resource, agent_id=agent_id, mode=mode, ttl=ttl, wait=wait,
                            expected_duration=expected_duration, keep_alive=keep_alive)
        with held:
            yield held

    @contextmanager
    def try_lease(self, resource: str, *, agent_id: str, mode: Mode | str = Mode.EXCLUSIVE,
                  ttl: float = 30.0) -> Iterator[Lease | None]:
        """Non-blocking ``lease``: yields None when the resource is busy."""
        held = self.try_acquire(resource, agent_id=agent_id, mode=mode, ttl=ttl)
        if held is None:
            yield None
            return
        with held:
            yield held

    @contextmanager
    def lease_many(self, resources: Sequence[str], *, agent_id: str, mode: Mode | str = Mode.EXCLUSIVE,
                   ttl: float = 30.0, wait: float = 10.0, expected_duration: float | None = None,
                   keep_alive: bool = False) -> Iterator[list[Lease]]:
        """Take several leases in the global lock order (``wait`` bounds the whole set), yield them in
        that order, release them in reverse order."""
        taken: list[Lease] = []
        deadline = time.monotonic() + wait
        try:
            for r in rules.sort_resources(resources, self.rank):
                taken.append(self.acquire(r, agent_id=agent_id, mode=mode, ttl=ttl,
                                          wait=max(deadline - time.monotonic(), 0.0),
                                          expected_duration=expected_duration, keep_alive=keep_alive))
            yield taken
        finally:
            for held in reversed(taken):
                if not held.released:
                    try:
                        held.release()
                    except LeaseNotHeldError as e:
                        log.warning("lease_many: %s", e)

    def release(self, lease: Lease) -> None:
        """Release one hold; LeaseNotHeldError if the lease expired, was revoked or taken over."""
        lease._stop_keeper()
        lease.released = True
        held, expired = self._tx(lambda cur: db.release(cur, lease.resource, lease.agent_id, lease.token))
        if expired is not None:
            self.metrics.expired(lease.resource, lease.agent_id)
            raise LeaseNotHeldError(
                f"the lease of {lease.agent_id!r} on {lease.resource!r} (token {lease.token}) expired before "
                "it was released; writes under it after the expiry are fenced once someone else takes it")
        if held is not None:
            self.metrics.released(lease.resource, lease.agent_id, held)

    def renew(self, lease: Lease, ttl: float | None = None) -> datetime:
        """Extend a held lease; LeaseNotHeldError if it already expired or was revoked."""
        if lease.released:
            raise LeaseNotHeldError(f"the lease on {lease.resource!r} was already released")
        new_ttl = lease.ttl if ttl is None else float(ttl)
        expires = self._tx(lambda cur: db.renew(cur, lease.resource, lease.agent_id, lease.token, new_ttl))
        lease.expires_at = expires
        return expires

    def kill(self, agent_id: str, reason: str) -> list[str]:
        """The kill switch: mark the agent killed (the projector rejects its new events, no grant
        succeeds), then revoke all its leases and waits at once, fencing their tokens. Returns the
        revoked resources. Idempotent: killing again revokes anything left."""
        check_name("agent_id", agent_id)
        if not reason:
            raise ConfigurationError("kill needs a reason; it is recorded and shown to the agent")
        self._tx(lambda cur: db.mark_killed(cur, agent_id, reason))
        revoked = self._tx(lambda cur: db.revoke_all(cur, agent_id, f"agent killed: {reason}", killed=True))
        for r, _, _ in revoked:
            self.metrics.revoked(r, agent_id)
        log.warning("agent %r killed (%s); revoked %s", agent_id, reason, [r for r, _, _ in revoked])
        return [r for r, _, _ in revoked]

    def revive(self, agent_id: str) -> bool:
        """Undo ``kill``; False if the agent was never known to the coordinator."""
        check_name("agent_id", agent_id)
        return self._tx(lambda cur: db.revive(cur, agent_id))

    def holders(self, resources: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Current holders (with expired rows flagged), for operators and tests."""
        return self._tx(lambda cur: db.holders_of(cur, resources))

    def deadlocks(self) -> list[list[str]]:
        """Wait-for cycles present now (an operator's view; waiters break them themselves)."""
        holders, waiters = self._tx(lambda cur: db.wait_graph(cur, self.stale_waiter_after))
        return rules.all_cycles(rules.wait_for_edges(holders, waiters))

    def refresh_fence_rejections(self) -> dict[str, int]:
        """Count events the projector refused for stale lease tokens (from outcomes) into the metrics."""
        counts = self._tx(db.fence_rejections)
        self.metrics.set_fence_rejections(counts)
        return counts

    def metrics_text(self) -> bytes:
        """Prometheus text exposition of this coordinator's metrics."""
        return self.metrics.render()
