"""A waiter whose place in the lease queue is lost queues again and is served (issue 11 aim 4, round 3): the
premise on which queueing without a durable commit of its own rests since migration 0013 (docs/perf-leases.md
"Round 5"): the queue row is committed without a flush and the wait is chained only when it ends."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from eventstore.coordination import Coordinator, Lease
from eventstore.core.lockevents import LeaseGranted, LeaseWaited


@pytest.fixture
def coord(database_url: str) -> Iterator[Coordinator]:
    with Coordinator(database_url, detect_interval=0.1) as c:
        yield c


def test_a_waiter_whose_queue_place_was_lost_queues_again_and_gets_the_lease(coord: Coordinator,
                                                                            database_url: str) -> None:
    """The queue row vanishes (deleted here, as a crash would lose a queue commit that was not flushed).
    The waiter's next poll queues it again (a second LeaseWaited), and the holder's release hands the
    lease to it with a newer token."""
    holder = coord.acquire("lost", agent_id="holder", wait=0)
    acq = coord.acquisition("lost", agent_id="waiter", ttl=9, wait=30)
    assert isinstance(acq.step(), float)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("DELETE FROM lease_waiters WHERE agent_id = 'waiter'").rowcount == 1
    assert isinstance(acq.step(), float)  # queued again
    with psycopg.connect(database_url) as conn:
        # The lost wait left no trace in the chain (a wait is chained when it ends, migration 0013), and the
        # lock state is whole: the holder still holds with its token.
        waits = conn.execute("SELECT count(*) FROM lock_events WHERE type = 'LeaseWaited'").fetchone()
        assert waits == (0,)
        assert conn.execute("SELECT agent_id, token FROM lease_holders WHERE resource = 'lost'").fetchall() == [
            ("holder", holder.token)]
        assert conn.execute("SELECT agent_id FROM lease_waiters WHERE resource = 'lost'").fetchall() == [("waiter",)]
    holder.release()
    got = None
    for _ in range(200):
        got = acq.step()
        if isinstance(got, Lease):
            break
    assert isinstance(got, Lease) and got.token > holder.token
    acq.done()
    got.release()
    with psycopg.connect(database_url) as conn:
        history = conn.execute("SELECT type, agent_id, payload::jsonb ->> 'ended' FROM lock_events "
                               "WHERE stream = 'lease-lost' ORDER BY chain_seq").fetchall()
    # The served wait (the second queue row) is chained once, right before its grant.
    assert [(t, a) for t, a, _ in history] == [
        ("LeaseGranted", "holder"), ("LeaseReleased", "holder"), ("LeaseWaited", "waiter"),
        ("LeaseGranted", "waiter"), ("LeaseReleased", "waiter")]
    assert history[2][2] in ("handed_off", "granted")


def test_a_contended_request_makes_one_chained_commit(coord: Coordinator, database_url: str) -> None:
    """Queueing writes the queue row (with whom it waits behind) and no lock event; the release that hands
    the lease on chains LeaseReleased, the waiter's LeaseWaited and its LeaseGranted in ONE transaction."""
    holder = coord.acquire("one", agent_id="holder", wait=0)
    acq = coord.acquisition("one", agent_id="waiter", ttl=9, wait=30)
    with psycopg.connect(database_url) as conn:
        before = conn.execute("SELECT count(*) FROM lock_events").fetchone()
        assert isinstance(acq.step(), float)
        assert conn.execute("SELECT count(*) FROM lock_events").fetchone() == before
        assert conn.execute("SELECT held_by FROM lease_waiters WHERE agent_id = 'waiter'").fetchone() == (["holder"],)
    holder.release()
    got = None
    for _ in range(200):
        got = acq.step()
        if isinstance(got, Lease):
            break
    assert isinstance(got, Lease) and got.token > holder.token
    acq.done()
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT type, agent_id, xmin::text, payload FROM lock_events WHERE stream = 'lease-one' "
                            "ORDER BY chain_seq").fetchall()
    assert [(t, a) for t, a, _, _ in rows] == [
        ("LeaseGranted", "holder"), ("LeaseReleased", "holder"), ("LeaseWaited", "waiter"), ("LeaseGranted", "waiter")]
    assert rows[1][2] == rows[2][2] == rows[3][2]  # one transaction: the hand-off
    waited = LeaseWaited.model_validate_json(rows[2][3])
    granted = LeaseGranted.model_validate_json(rows[3][3])
    assert waited.ended == "handed_off" and waited.held_by == ["holder"] and waited.queue_seq is not None
    assert waited.enqueued_at is not None and waited.waited_seconds is not None
    assert abs(waited.waited_seconds - granted.waited_seconds) < 0.05
    got.release()
