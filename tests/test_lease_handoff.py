"""Direct lease hand-off (migration 0010, issue 11 aim 4): a release grants the lease to the head of the
FIFO queue in its own transaction. These tests try to make a hand-off leak or break an order: a waiter
that missed the notification, a waiter that gave up, died or was killed after it queued, a waiter that
queues in the same instant as the release, and FIFO with real threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from eventstore.coordination import Coordinator, Lease, Mode
from eventstore.coordination.acquisition import Acquisition
from eventstore.coordination.wakeup import parse
from eventstore.postgres import leaseadmin, leases


@pytest.fixture
def coord(database_url: str) -> Iterator[Coordinator]:
    with Coordinator(database_url, detect_interval=0.1) as c:
        yield c


def scalar(url: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def rows(url: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()


def lock_events(url: str, resource: str) -> list[tuple[str, str, int]]:
    """(type, agent, token; 0 for none) of a resource's lock events that name it, in chain order."""
    return [(str(t), str(a), int(k or 0)) for t, a, k in rows(
        url, "SELECT type, agent_id, fencing_token FROM lock_events WHERE lease_resource = %s ORDER BY chain_seq",
        (resource,))]


def queue(url: str, resource: str, agent: str, ttl: float) -> None:
    """Queue ``agent`` for ``resource`` the way a first poll does, with no process polling for it later
    (a waiter that went away right after it queued)."""
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        res = leases.attempt(cur, resource, agent, Mode.EXCLUSIVE, ttl, queue=True, expected=None,
                             stale_after=5.0)
        assert res.grant is None and res.newly_queued


def until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def queued(coord: Coordinator, resource: str, agent: str, ttl: float = 9.0) -> Acquisition:
    """A request of ``agent`` that has taken its place in the queue (one poll), its listener listening."""
    acq = coord.acquisition(resource, agent_id=agent, ttl=ttl, wait=30)
    assert isinstance(acq.step(), float)
    until(coord.wakeups.listening.is_set, "the lease listener")
    return acq


def test_a_release_hands_the_lease_to_the_head_in_its_own_transaction(coord: Coordinator,
                                                                       database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN eventstore_leases")
        held = coord.acquire("h", agent_id="holder", wait=0)
        queue(database_url, "h", "next", ttl=9)
        queue(database_url, "h", "after", ttl=9)
        held.release()
        note = next(iter(listener.notifies(timeout=10, stop_after=1)))
    resource, head, grant = parse(note.payload)
    assert (resource, head) == ("h", "next") and grant is not None
    assert grant.token > held.token
    assert rows(database_url, "SELECT agent_id, token, handoff, hold_count, ttl_seconds FROM lease_holders") == [
        ("next", grant.token, True, 1, 9.0)]
    assert scalar(database_url, "SELECT fence_token FROM resources WHERE resource = 'h'") == grant.token
    assert rows(database_url, "SELECT agent_id FROM lease_waiters") == [("after",)]
    assert lock_events(database_url, "h")[-2:] == [("LeaseReleased", "holder", held.token),
                                                   ("LeaseGranted", "next", grant.token)]
    # The release and the grant are one transaction: both rows carry the same transaction id.
    assert scalar(database_url, "SELECT count(DISTINCT xmin::text) FROM lock_events WHERE lease_resource = 'h' "
                                "AND type IN ('LeaseReleased', 'LeaseGranted') AND chain_seq > "
                                "(SELECT min(chain_seq) FROM lock_events WHERE lease_resource = 'h')") == 1


def test_a_waiting_coordinator_returns_the_handed_off_lease(database_url: str) -> None:
    with Coordinator(database_url) as c1, Coordinator(database_url) as c2:
        held = c1.acquire("w", agent_id="holder", wait=0)
        got: list[Lease] = []
        waiter = threading.Thread(target=lambda: got.append(c2.acquire("w", agent_id="waiter", ttl=7, wait=30)))
        waiter.start()
        until(lambda: scalar(database_url, "SELECT count(*) FROM lease_waiters") == 1, "the waiter to queue")
        held.release()
        waiter.join(30)
        assert got, "the waiter did not get the lease"
        lease = got[0]
        (token,) = rows(database_url, "SELECT token FROM lease_holders WHERE agent_id = 'waiter'")[0]
        assert lease.token == token > held.token
        lease.release()  # one level: the lease is free afterwards
        assert scalar(database_url, "SELECT count(*) FROM lease_holders") == 0
        assert c2.metrics.snapshot().by_pair[("w", "waiter")].grants == 1


def test_a_waiter_that_missed_the_notification_takes_its_handoff_once(coord: Coordinator,
                                                                       database_url: str) -> None:
    with Coordinator(database_url) as other:
        held = other.acquire("m", agent_id="holder", wait=0)
        acq = queued(coord, "m", "q")
        held.release()
        assert acq.wake is not None
        until(acq.wake.is_set, "the hand-off notification")
        acq.wake.grant = None  # as if the notification had been lost
        lease = acq.step()
        acq.done()
    assert isinstance(lease, Lease)
    assert rows(database_url, "SELECT agent_id, token, handoff, hold_count FROM lease_holders") == [
        ("q", lease.token, False, 1)]
    lease.release()  # not counted twice: one release frees it
    assert scalar(database_url, "SELECT count(*) FROM lease_holders") == 0
    assert [t for t, a, _ in lock_events(database_url, "m") if a == "q"] == ["LeaseGranted", "LeaseReleased"]


def test_a_waiter_that_gave_up_after_the_handoff_hands_it_on(coord: Coordinator, database_url: str) -> None:
    with Coordinator(database_url) as other:
        held = other.acquire("g", agent_id="holder", wait=0)
        acq = queued(coord, "g", "quitter")
        queue(database_url, "g", "patient", ttl=9)
        held.release()
        assert acq.wake is not None
        until(acq.wake.is_set, "the hand-off notification")
        acq.wake.grant = None  # it gives up before it sees the grant
        acq.abandon("wait ran out")
        acq.done()
    assert rows(database_url, "SELECT agent_id, handoff FROM lease_holders") == [("patient", True)]
    events = lock_events(database_url, "g")
    assert [(t, a) for t, a, _ in events[-3:]] == [
        ("LeaseGranted", "quitter"), ("LeaseReleased", "quitter"), ("LeaseGranted", "patient")]
    assert events[-3][2] == events[-2][2] < events[-1][2]  # the quitter's token released, a newer one handed on


def test_a_lease_handed_to_a_waiter_that_died_expires_and_is_fenced(coord: Coordinator, database_url: str) -> None:
    held = coord.acquire("d", agent_id="holder", wait=0)
    queue(database_url, "d", "ghost", ttl=0.5)  # its process dies: nobody will ever use or release it
    held.release()
    (ghost_token,) = rows(database_url, "SELECT token FROM lease_holders WHERE agent_id = 'ghost'")[0]
    start = time.monotonic()
    lease = coord.acquire("d", agent_id="live", ttl=5, wait=20)
    assert time.monotonic() - start < 15
    assert lease.token > ghost_token
    expired = [e for e in lock_events(database_url, "d") if e[0] == "LeaseExpired"]
    assert expired == [("LeaseExpired", "ghost", ghost_token)]
    assert scalar(database_url, "SELECT fence_token FROM resources WHERE resource = 'd'") == lease.token
    lease.release()


def test_a_killed_waiter_is_passed_over_and_a_handed_lease_is_revoked_by_a_kill(coord: Coordinator,
                                                                               database_url: str) -> None:
    held = coord.acquire("k", agent_id="holder", wait=0)
    queue(database_url, "k", "killed", ttl=9)
    queue(database_url, "k", "next", ttl=9)
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        leaseadmin.mark_killed(cur, "killed", "test")  # step 1 of a kill only: it is still queued
    held.release()
    assert rows(database_url, "SELECT agent_id FROM lease_holders") == [("next",)]
    assert coord.kill("next", "test") == ["k"]
    assert scalar(database_url, "SELECT count(*) FROM lease_holders") == 0
    revoked = [e for e in lock_events(database_url, "k") if e[0] == "LeaseRevoked"]
    assert [a for _, a, _ in revoked] == ["next"]
    assert scalar(database_url, "SELECT fence_token FROM resources WHERE resource = 'k'") > revoked[0][2]


def test_a_release_sees_a_waiter_that_queues_in_the_same_instant(coord: Coordinator, database_url: str) -> None:
    """The waiter's first poll holds the resource's advisory lock until its commit; the release waits
    for it and then hands the lease over (before 0010 the release could miss it and the waiter slept
    until its next backstop poll)."""
    held = coord.acquire("s", agent_id="holder", wait=0)
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        res = leases.attempt(cur, "s", "w", Mode.EXCLUSIVE, 9, queue=True, expected=None, stale_after=5.0)
        assert res.newly_queued
        releasing = threading.Thread(target=held.release)
        releasing.start()
        time.sleep(0.3)
        assert releasing.is_alive()  # waits for the queueing transaction
    releasing.join(20)
    assert not releasing.is_alive()
    assert rows(database_url, "SELECT agent_id, handoff FROM lease_holders") == [("w", True)]


def test_handoffs_keep_fifo_order_and_increasing_tokens_with_real_threads(database_url: str) -> None:
    with Coordinator(database_url) as c:
        held = c.acquire("f", agent_id="holder", wait=0)
        order: list[tuple[str, int]] = []
        lock = threading.Lock()

        def wait_then_work(agent: str) -> None:
            with c.lease("f", agent_id=agent, ttl=10, wait=60) as lease:
                with lock:
                    order.append((agent, lease.token))
                time.sleep(0.01)

        threads = []
        for i in range(6):
            t = threading.Thread(target=wait_then_work, args=(f"a{i}",))
            t.start()
            threads.append(t)
            until(lambda: scalar(database_url, "SELECT count(*) FROM lease_waiters") == len(threads),
                  f"waiter a{i} to queue")
        held.release()
        for t in threads:
            t.join(60)
    assert [a for a, _ in order] == [f"a{i}" for i in range(6)]
    tokens = [k for _, k in order]
    assert tokens == sorted(tokens) and len(set(tokens)) == 6 and tokens[0] > held.token
    granted = [a for t, a, _ in lock_events(database_url, "f") if t == "LeaseGranted"]
    assert granted == ["holder"] + [f"a{i}" for i in range(6)]


def test_a_forged_handoff_notice_grants_nothing(database_url: str) -> None:
    """Any role may NOTIFY: a notice that hands a lease to a waiter is checked against the database
    before the waiter believes it."""
    with Coordinator(database_url) as c1, Coordinator(database_url) as c2:
        held = c1.acquire("x", agent_id="holder", wait=0)
        got: list[Lease] = []
        waiter = threading.Thread(target=lambda: got.append(c2.acquire("x", agent_id="waiter", wait=30)))
        waiter.start()
        until(lambda: scalar(database_url, "SELECT count(*) FROM lease_waiters") == 1, "the waiter to queue")
        until(c2.wakeups.listening.is_set, "the lease listener")
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("SELECT pg_notify('eventstore_leases', %s)",
                         ("x\x1fwaiter\x1f999999\x1f" + str(time.time() + 60) + "\x1f0.1",))
        time.sleep(0.5)
        assert not got and waiter.is_alive()
        held.release()
        waiter.join(30)
        assert got and got[0].token != 999999
        assert rows(database_url, "SELECT agent_id, token FROM lease_holders") == [("waiter", got[0].token)]
        got[0].release()


@pytest.mark.parametrize("pipeline", [True, False])
def test_a_request_on_a_recently_contended_resource_sends_its_snapshot_with_the_grant(
        database_url: str, pipeline: bool) -> None:
    """With ``prefetch`` the one-call grant and the full step's snapshot travel together: a free resource
    is still granted (the snapshot dropped), a busy one still queued, each exactly once."""
    with Coordinator(database_url, pipeline=pipeline) as c:
        c.contended["p"] = time.monotonic()
        free = c.acquire("p", agent_id="first", wait=0)  # granted by the one call, snapshot dropped
        assert rows(database_url, "SELECT agent_id, hold_count FROM lease_holders") == [("first", 1)]
        acq = c.acquisition("p", agent_id="second", wait=30)
        assert isinstance(acq.step(), float)  # queued by the full step on the prefetched snapshot
        assert rows(database_url, "SELECT agent_id FROM lease_waiters") == [("second",)]
        until(c.wakeups.listening.is_set, "the lease listener")
        free.release()  # handed to the queued request
        wake = acq.wake
        assert wake is not None
        until(lambda: wake.grant is not None, "the hand-off notice")
        lease = acq.step()
        acq.done()
        assert isinstance(lease, Lease) and lease.token > free.token
        lease.release()
    assert [t for t, _, _ in lock_events(database_url, "p")] == [
        "LeaseGranted", "LeaseReleased", "LeaseGranted", "LeaseReleased"]


def test_a_first_request_that_must_wait_is_queued_in_one_call(coord: Coordinator, database_url: str) -> None:
    """The one-call queueing (0010, 0013) writes the queue row with the TTL and who it waits behind (held_by
    sorted by code point), chained as a LeaseWaited that validates as its class when the wait ends; a request
    it leaves to the full step (the agent holds another lease, so the lock order is checked) is queued by the
    full step the same way."""
    from eventstore.core.lockevents import LeaseWaited

    held = [coord.acquire("q1", agent_id=a, mode="shared", wait=0) for a in ("b-holder", "B-holder")]
    coord.acquire("q0", agent_id="other", wait=0).release()  # the agent row of 'other' exists now
    one = coord.acquisition("q1", agent_id="other", ttl=4, wait=30, expected_duration=2)
    assert isinstance(one.step(), float)
    keep = coord.acquire("q0", agent_id="second", wait=0)  # holds q0 < q1: the order must be checked
    two = coord.acquisition("q1", agent_id="second", ttl=5, wait=30)
    assert isinstance(two.step(), float)
    assert rows(database_url, "SELECT agent_id, ttl_seconds FROM lease_waiters ORDER BY seq") == [
        ("other", 4.0), ("second", 5.0)]
    # Since 0013 a wait is chained when it ends: nothing yet, then one LeaseWaited per wait given up.
    assert rows(database_url, "SELECT count(*) FROM lock_events WHERE type = 'LeaseWaited'") == [(0,)]
    for acq in (one, two):
        acq.abandon("test over")
        acq.done()
    waited = rows(database_url, "SELECT payload FROM lock_events WHERE type = 'LeaseWaited' ORDER BY chain_seq")
    events = [LeaseWaited.model_validate_json(p) for (p,) in waited]
    assert [(e.agent_id, e.held_by, e.expected_seconds, e.ended) for e in events] == [
        ("other", ["B-holder", "b-holder"], 2.0, "left"), ("second", ["B-holder", "b-holder"], None, "left")]
    for lease in [*held, keep]:
        lease.release()
