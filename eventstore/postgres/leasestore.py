"""The lease store as one typed interface: the coordinator's steps (acquire, leave the queue, renew,
release, kill, revive, list holders), each one short transaction, and its PostgreSQL implementation.

The coordinator's policy (waiting, backoff, deadlock detection, alerts, metrics) stays in
:mod:`eventstore.coordination`; this is the storage contract under it, checked for every implementation
by tests/test_contract_leases.py. Time (TTL, expiry) is the store's clock, never the caller's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from eventstore.core.lockrules import Mode
from eventstore.postgres import leaseadmin, leaserelease, leases
from eventstore.postgres.eventlog import Cursor
from eventstore.postgres.leases import StepResult
from eventstore.postgres.leasesnapshot import Expiry

T = TypeVar("T")

__all__ = ["Expiry", "LeaseStore", "PostgresLeaseStore", "StepResult", "StepRunner"]


class LeaseStore(Protocol):
    """Durable leases with fencing tokens (promise 7)."""

    def acquire(self, resource: str, agent_id: str, mode: Mode, ttl: float, *, queue: bool = False,
                expected: float | None = None) -> StepResult:
        """One attempt: grant (a new token), re-enter (same token), or refuse; with ``queue`` keep a FIFO
        place instead of a refusal. Errors the caller must raise (kill switch, lock order) are in
        ``StepResult.error``; expired holders fenced on the way are in ``StepResult.expired``."""
        ...

    def leave_queue(self, resource: str, agent_id: str, mode: Mode, reason: str) -> float | None:
        """Give up a place in the queue (recorded with ``reason``); seconds waited, or None if not queued."""
        ...

    def renew(self, resource: str, agent_id: str, token: int, ttl: float) -> datetime:
        """Extend a live lease to now + ``ttl``; LeaseNotHeldError if it expired or was revoked."""
        ...

    def release(self, resource: str, agent_id: str, token: int) -> tuple[float | None, Expiry | None]:
        """Release one hold: (seconds held if now free of this agent, the expiry if it had expired);
        LeaseNotHeldError if the agent does not hold that token."""
        ...

    def kill(self, agent_id: str, reason: str) -> list[str]:
        """Stop the agent (no grant succeeds) and revoke all its leases and waits, fencing each token;
        returns the revoked resources."""
        ...

    def revive(self, agent_id: str) -> bool:
        """Undo ``kill``; False for an agent never seen."""
        ...

    def holders(self, resources: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Current holders (expired rows flagged), optionally of some resources."""
        ...


class StepRunner(Protocol):
    """Runs a function in one transaction with transient-error retries (the Coordinator is one)."""

    def run_step(self, fn: Callable[[Cursor], T], attempts: int = 5) -> T: ...

    def run_step_then_read(self, send: Callable[[Cursor], Callable[[], T]], attempts: int = 5) -> T:
        """Run a step whose results are read after its commit (one round trip in pipeline mode)."""
        ...

    def run_call(self, fn: Callable[[Cursor], T], attempts: int = 5) -> T:
        """Run ``fn``, which sends one statement and reads its result, as its own transaction."""
        ...


class PostgresLeaseStore:
    """The lease store in PostgreSQL (tables ``resources``, ``lease_holders``, ``lease_waiters``, ``agents``;
    the history in the event log). ``runner`` supplies transactions, e.g. a ``Coordinator``."""

    def __init__(self, runner: StepRunner, *, stale_after: float = 5.0) -> None:
        self._runner = runner
        self.stale_after = stale_after

    def acquire(self, resource: str, agent_id: str, mode: Mode, ttl: float, *, queue: bool = False,
                expected: float | None = None) -> StepResult:
        # One transaction: a request that is not granted is queued as of it (FIFO).
        return self._runner.run_step(lambda cur: leases.attempt(
            cur, resource, agent_id, mode, ttl, queue=queue, expected=expected, stale_after=self.stale_after))

    def leave_queue(self, resource: str, agent_id: str, mode: Mode, reason: str) -> float | None:
        return self._runner.run_step(lambda cur: leases.leave_queue(
            cur, resource, agent_id, mode, reason, stale_after=self.stale_after))

    def renew(self, resource: str, agent_id: str, token: int, ttl: float) -> datetime:
        return self._runner.run_step(lambda cur: leaserelease.renew(cur, resource, agent_id, token, ttl))

    def release(self, resource: str, agent_id: str, token: int) -> tuple[float | None, Expiry | None]:
        # The common case in one statement (autocommit); the rest (re-entered, expired, not held) in a second step.
        held = self._runner.run_call(
            lambda cur: leaserelease.send_release_fast(cur, resource, agent_id, token, self.stale_after)())
        if held is not None:
            return held, None
        return self._runner.run_step(lambda cur: leaserelease.release_rest(cur, resource, agent_id, token))

    def kill(self, agent_id: str, reason: str) -> list[str]:
        # Two transactions, as the coordinator does: once the mark commits no grant can succeed, so the
        # revocation that follows cannot miss a lease granted concurrently.
        self._runner.run_step(lambda cur: leaseadmin.mark_killed(cur, agent_id, reason))
        revoked = self._runner.run_step(
            lambda cur: leaseadmin.revoke_all(cur, agent_id, f"agent killed: {reason}", killed=True))
        return [r for r, _, _ in revoked]

    def revive(self, agent_id: str) -> bool:
        return self._runner.run_step(lambda cur: leaseadmin.revive(cur, agent_id))

    def holders(self, resources: Sequence[str] | None = None) -> list[dict[str, Any]]:
        return self._runner.run_step(lambda cur: leaseadmin.holders_of(cur, resources))
