"""The coordinator: durable leases in PostgreSQL with TTL, fencing tokens, FCFS waiting, a global lock
order, deadlock detection, wait-exceeded alerts and a kill switch.

Unlike an in-memory lock table, every decision is a short PostgreSQL transaction (see
:mod:`eventstore.coordination.leases`), so leases exclude across processes and survive restarts; time
(TTL, waits) is the database clock. A waiter polls with a small jittered backoff and, while it waits,
runs the deadlock detector itself, so no extra process is needed for a cycle to be found within
about ``detect_interval`` seconds, and releases NOTIFY so the head of the queue polls at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

from psycopg.pq import TransactionStatus

from eventstore.coordination.acquisition import Acquisition, Lease
from eventstore.coordination.alerts import Alerter
from eventstore.coordination.metrics import LeaseMetrics
from eventstore.coordination.wakeup import Wakeups
from eventstore.core import lockrules as rules
from eventstore.core.errors import (
    ConfigurationError,
    CoordinationError,
    LeaseNotHeldError,
    LeaseTimeout,
    StorageError,
    TransientStorageError,
)
from eventstore.core.lockevents import AgentKilled
from eventstore.core.lockrules import Mode
from eventstore.core.settings import Settings
from eventstore.core.validation import check_name
from eventstore.discovery import resolve_settings
from eventstore.postgres import leaseadmin as lease_admin
from eventstore.postgres.connection import Database, converted_errors
from eventstore.postgres.eventlog import Cursor
from eventstore.postgres.leaserelease import read_notice_key
from eventstore.postgres.leasestore import PostgresLeaseStore

log = logging.getLogger("eventstore.coordination")
T = TypeVar("T")

__all__ = ["Coordinator", "Lease"]



R = TypeVar("R")
_UNREAD = object()  # the notice key has not been read yet


def _itself(result: T) -> T:
    return result


def _called(read: Callable[[], T]) -> T:
    return read()

class Coordinator:
    """Leases on named resources for agents in any process, stored in PostgreSQL.

    ``settings`` (or just a database URL) default to the environment, completed from a running
    ``eventstore dev``. ``rank`` maps a resource id to its place in the global lock order (default: the id itself);
    ``enforce_lock_order`` makes out-of-order requests raise LockOrderViolation; ``alert_webhook``
    (default ``EVENTSTORE_ALERT_WEBHOOK``) receives deadlock, wait-exceeded and kill alerts.
    ``synchronous_commit=False`` is for benchmarks only: after a server crash a grant the caller
    believes it holds may be lost, which breaks the fencing guarantee.
    """

    def __init__(self, settings: Settings | str | None = None, *, rank: rules.OrderKey | None = None,
                 enforce_lock_order: bool = True, alert_webhook: str | None = None,
                 detect_interval: float = 0.25, stale_waiter_after: float = 5.0, pool_size: int = 10,
                 pipeline: bool = True, synchronous_commit: bool = True) -> None:
        self.settings = resolve_settings(settings)
        database = Database(self.settings.require_database(), application_name="eventstore-coordinator")
        self.rank: rules.OrderKey = rank or rules.default_rank
        self.enforce_lock_order = enforce_lock_order
        self.detect_interval = detect_interval
        self.stale_waiter_after = stale_waiter_after
        self.pipeline = pipeline
        self.synchronous_commit = synchronous_commit
        self.metrics = LeaseMetrics()
        self.alerter = Alerter(alert_webhook if alert_webhook is not None else self.settings.alert_webhook)
        self.wakeups = Wakeups(database)
        self.contended: dict[str, float] = {}  # resource -> when a request of this process last queued
        self._notice_key: bytes | object | None = _UNREAD
        self._pool = database.pool(min_size=1, max_size=pool_size, autocommit=False, name="eventstore-coordinator",
                                   check=False)
        # The storage steps behind one typed interface (tests/test_contract_leases.py); the policy is here.
        self.store = PostgresLeaseStore(self, stale_after=stale_waiter_after)

    def close(self) -> None:
        """Close the connection pool and the listener (held leases stay until released or expired)."""
        self.wakeups.close()
        self._pool.close()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_step(self, fn: Callable[[Cursor], T], attempts: int = 5) -> T:
        """Run ``fn`` in one transaction, retrying transient failures with a short backoff."""
        return self._transaction(fn, attempts, _itself)

    def run_step_then_read(self, send: Callable[[Cursor], Callable[[], T]], attempts: int = 5) -> T:
        """Run a step that needs no answer before its commit: ``send`` sends its statements and returns
        the reader of their results, called after the commit. In pipeline mode the statements and the
        commit travel in one round trip."""
        return self._transaction(send, attempts, _called)

    def run_call(self, fn: Callable[[Cursor], T], attempts: int = 5) -> T:
        """Run ``fn``, which sends ONE statement and reads its result, in autocommit mode: the statement
        is its own transaction, durable at its commit, in one round trip with no BEGIN or COMMIT for
        either side to process. With ``synchronous_commit=False`` it runs as a step (``run_step``)."""
        if not self.synchronous_commit:
            return self.run_step(fn, attempts)

        def attempt() -> T:
            with converted_errors(), self._pool.connection() as conn:
                conn.autocommit = True  # client-side only: no round trip
                try:
                    with conn.cursor() as cur:
                        return fn(cur)
                finally:
                    if conn.info.transaction_status == TransactionStatus.IDLE:
                        conn.autocommit = False  # else the pool discards the broken connection

        return self._retrying(attempt, attempts)

    def notice_key(self) -> bytes | None:
        """The key that signs hand-off notices (migration 0011), read once; None if this role cannot read
        it (every notice is then checked with a read, as before 0011)."""
        if self._notice_key is _UNREAD:
            try:
                key = self.run_call(read_notice_key, attempts=1)
            except TransientStorageError:
                return None  # try again at the next hand-off
            except StorageError as e:
                log.warning("cannot read the hand-off notice key (%s); hand-offs are checked with a read", e)
                key = None
            self._notice_key = key
        return self._notice_key if isinstance(self._notice_key, bytes) else None

    def _transaction(self, fn: Callable[[Cursor], R], attempts: int, finish: Callable[[R], T]) -> T:
        def attempt() -> T:
            with converted_errors(), self._pool.connection() as conn, conn.cursor() as cur:
                if not self.synchronous_commit:
                    cur.execute("SET LOCAL synchronous_commit = off")
                if not self.pipeline:
                    result = fn(cur)
                    conn.commit()
                    return finish(result)
                # Pipeline mode: statements whose results are not read yet travel together,
                # the commit included.
                with conn.pipeline():
                    result = fn(cur)
                    conn.commit()
                    return finish(result)

        return self._retrying(attempt, attempts)

    def _retrying(self, attempt: Callable[[], T], attempts: int) -> T:
        """``attempt()``, again after a transient failure (a lost connection, a restarting server) with a
        short backoff, at most ``attempts`` times."""
        for i in range(attempts):
            try:
                return attempt()
            except TransientStorageError:
                if i == attempts - 1:
                    raise
                # The pool does not test a connection on every checkout (a round trip each time): after
                # a failure it tests all idle ones at once, so a restarted server costs one retry.
                self._pool.check()
                time.sleep(rules.backoff(i, base=0.01, cap=0.2))
        raise TransientStorageError(f"no attempt was made (attempts={attempts})")

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
        acq.follows_wakeups = True
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
            # Timeouts, victims and kills have left the queue already; anything else (interrupt,
            # storage failure) leaves it here so it does not hold up those behind until it goes stale.
            if acq.queued and not isinstance(e, CoordinationError):
                try:
                    acq.abandon(f"interrupted: {type(e).__name__}")
                except Exception as again:  # the database may be what failed; the row goes stale anyway
                    log.warning("could not leave the queue of %r: %s", resource, again)
            raise
        finally:
            acq.done()

    def try_acquire(self, resource: str, *, agent_id: str, mode: Mode | str = Mode.EXCLUSIVE,
                    ttl: float = 30.0) -> Lease | None:
        """Take the lease if it is free now, else return None (recorded as a denial); never queues."""
        r = self.acquisition(resource, agent_id=agent_id, mode=mode, ttl=ttl, wait=0).step()
        return r if isinstance(r, Lease) else None  # with wait=0 a busy resource is refused, never waited for

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
        lease.stop_keeper()
        try:
            held, expired = self.store.release(lease.resource, lease.agent_id, lease.token)
        except LeaseNotHeldError:
            lease.released = True
            raise
        lease.released = True
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
        expires = self.store.renew(lease.resource, lease.agent_id, lease.token, new_ttl)
        lease.expires_at = expires
        return expires

    def kill(self, agent_id: str, reason: str) -> list[str]:
        """The kill switch: mark the agent killed (the projector rejects its new events, no grant
        succeeds), then revoke all its leases and waits at once, fencing their tokens. Returns the
        revoked resources. Idempotent: killing again revokes anything left."""
        check_name("agent_id", agent_id)
        if not reason:
            raise ConfigurationError("kill needs a reason; it is recorded and shown to the agent")
        resources = self.store.kill(agent_id, reason)
        for r in resources:
            self.metrics.revoked(r, agent_id)
        self.alerter.send(AgentKilled(agent_id=agent_id, reason=reason, revoked=resources))
        return resources

    def revive(self, agent_id: str) -> bool:
        """Undo ``kill``; False if the agent was never known to the coordinator."""
        check_name("agent_id", agent_id)
        return self.store.revive(agent_id)

    def holders(self, resources: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Current holders (with expired rows flagged), for operators and tests."""
        return self.store.holders(resources)

    def deadlocks(self) -> list[list[str]]:
        """Wait-for cycles present now (an operator's view; waiters break them themselves)."""
        holders, waiters = self.run_step(lambda cur: lease_admin.wait_graph(cur, self.stale_waiter_after))
        return rules.all_cycles(rules.wait_for_edges(holders, waiters))

    def refresh_fence_rejections(self) -> dict[str, int]:
        """Count events the projector refused for stale lease tokens (from outcomes) into the metrics."""
        counts = self.run_step(lease_admin.fence_rejections)
        self.metrics.set_fence_rejections(counts)
        return counts

    def metrics_text(self) -> bytes:
        """Prometheus text exposition of this coordinator's metrics."""
        return self.metrics.render()
