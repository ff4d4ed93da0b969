"""A waiter whose place in the lease queue is lost queues again and is served (issue 11 aim 4, round 3):
the premise any future queueing without a durable commit of its own would rest on (docs/perf-leases.md
"Round 3")."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from eventstore.coordination import Coordinator, Lease


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
        waits = conn.execute("SELECT count(*) FROM lock_events WHERE type = 'LeaseWaited' AND agent_id = 'waiter'"
                             ).fetchone()
        assert waits is not None and waits[0] == 2
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
