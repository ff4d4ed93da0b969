"""The lease steps after a grant: release (the one-statement release that may hand the lease on, and the
cases it leaves), renew, and what a waiter reads to believe a hand-off notice (its check, the notice key).
Same lock order and lock chain as leases.py."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from eventstore.core import lockevents as ev
from eventstore.core.errors import LeaseNotHeldError
from eventstore.core.lockrules import key_of
from eventstore.postgres.eventlog import Cursor
from eventstore.postgres.lease_sql import (
    ADVISORY_NS,
    CHECK_HANDOFF,
    DECREMENT,
    DROP_HOLDER,
    NOTICE_KEY,
    RELEASE_FAST,
    RELEASE_ROW,
    RENEW,
)
from eventstore.postgres.leasecommon import bump_fence, lease_stream, lock_resource, notify_waiters
from eventstore.postgres.leasesnapshot import Expiry
from eventstore.postgres.lockchain import LockLog


def send_check_handoff(cur: Cursor, resource: str, agent_id: str, token: int) -> Callable[[], datetime | None]:
    """Send the check of a hand-off a notification announced; the reader gives its expiry, or None if
    the database holds no such hand-off (forged notice, or revoked or expired meanwhile)."""
    cur.execute(CHECK_HANDOFF, (resource, agent_id, token))

    def read() -> datetime | None:
        row = cur.fetchone()
        return None if row is None else row[0]
    return read


def read_notice_key(cur: Cursor) -> bytes | None:
    """The key that signs hand-off notices (migration 0011), or None if there is none."""
    cur.execute(NOTICE_KEY)
    row = cur.fetchone()
    return None if row is None else bytes(row[0])


def send_release_fast(cur: Cursor, resource: str, agent_id: str, token: int,
                      stale_after: float = 5.0) -> Callable[[], float | None]:
    """Send the common release (a live, non-re-entered hold: one call, migration 0010, that also chains
    its LeaseReleased and hands the lease to the head of the queue, or wakes it); the reader gives the
    seconds held, or None if the call changed nothing and ``release_rest`` must decide (in a transaction
    of its own or the same one). Waiters whose heartbeat is older than ``stale_after`` are passed over."""
    cur.execute(RELEASE_FAST, {"r": resource, "a": agent_id, "t": token, "ns": ADVISORY_NS,
                               "k": key_of(resource), "stale": stale_after})

    def read() -> float | None:
        row = cur.fetchone()
        return None if row is None else float(row[0])
    return read


def release(cur: Cursor, resource: str, agent_id: str, token: int,
            stale_after: float = 5.0) -> tuple[float | None, Expiry | None]:
    """Release one hold. Returns (held seconds if the lease is now free of this agent, expiry if it had
    expired). Raises LeaseNotHeldError if the agent does not hold this grant.

    The common case (a live, non-re-entered hold) is one call that may hand the lease to the next waiter.
    """
    held = send_release_fast(cur, resource, agent_id, token, stale_after)()
    if held is not None:
        return held, None
    return release_rest(cur, resource, agent_id, token)


def release_rest(cur: Cursor, resource: str, agent_id: str, token: int) -> tuple[float | None, Expiry | None]:
    """The release cases the one-statement release leaves: re-entered, expired, or not held at all."""
    log = LockLog()
    lock_resource(cur, resource)
    cur.execute(RELEASE_ROW, (resource, agent_id))
    row = cur.fetchone()
    if row is None or int(row[0]) != token:
        raise LeaseNotHeldError(
            f"agent {agent_id!r} does not hold the lease on {resource!r} with token {token} "
            "(it expired and was taken over, was revoked, or was never granted)")
    count, alive, held = int(row[1]), bool(row[2]), float(row[3])
    if not alive:
        cur.execute(DROP_HOLDER, (resource, agent_id))
        fence = bump_fence(cur, resource)
        notify_waiters(cur, resource)
        log.add(lease_stream(resource), ev.LeaseExpired(
            resource=resource, agent_id=agent_id, token=token, fence_token=fence), agent_id, resource, token)
        log.append(cur)
        return None, Expiry(resource, agent_id, token, held)
    if count > 1:
        cur.execute(DECREMENT, (resource, agent_id))
        return None, None
    cur.execute(DROP_HOLDER, (resource, agent_id))
    notify_waiters(cur, resource)
    log.add(lease_stream(resource), ev.LeaseReleased(
        resource=resource, agent_id=agent_id, token=token, held_seconds=held), agent_id, resource, token)
    log.append(cur)
    return held, None


def renew(cur: Cursor, resource: str, agent_id: str, token: int, ttl: float) -> datetime:
    """Extend a live lease by ``ttl`` from now (database clock); LeaseNotHeldError if it is gone."""
    log = LockLog()
    cur.execute(RENEW, (ttl, ttl, resource, agent_id, token))
    row = cur.fetchone()
    if row is None:
        raise LeaseNotHeldError(
            f"agent {agent_id!r} cannot renew {resource!r} token {token}: the lease expired or was revoked")
    log.add(lease_stream(resource), ev.LeaseRenewed(
        resource=resource, agent_id=agent_id, token=token, ttl_seconds=ttl), agent_id, resource, token)
    log.append(cur)
    return row[0]  # type: ignore[no-any-return]
