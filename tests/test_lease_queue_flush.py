"""A place in the lease queue commits without a WAL flush of its own (migration 0011, issue 11 aim 4):
only a transaction that wrote nothing but a queue place (its ``LeaseWaited``) or a heartbeat does; every
grant, release, expiry and alert stays durable. A lost queue place (a crash before anything durable
followed it) only makes the waiter queue again; the next durable lock step flushes it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from eventstore.coordination import Coordinator, Lease, Mode
from eventstore.postgres import leases


@pytest.fixture
def coord(database_url: str) -> Iterator[Coordinator]:
    with Coordinator(database_url, detect_interval=0.1) as c:
        yield c


def sync_setting(cur: psycopg.Cursor[Any]) -> str:
    """The synchronous_commit the open transaction will commit with."""
    cur.execute("SELECT current_setting('synchronous_commit')")
    row = cur.fetchone()
    return str(row[0]) if row else "?"


def first_request(url: str, resource: str, agent: str) -> tuple[leases.StepResult | None, str]:
    """The one-call grant + one-call queueing of a first request (0010) and the setting it commits with."""
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        result = leases.send_first_request(cur, resource, agent, Mode.EXCLUSIVE, 9.0, False, None, 5.0)()
        return result, sync_setting(cur)


def full_step(url: str, resource: str, agent: str) -> tuple[leases.StepResult, str]:
    """The full step (queue=True) and the setting it commits with."""
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        result = leases.attempt(cur, resource, agent, Mode.EXCLUSIVE, 9.0, queue=True, expected=None,
                                stale_after=5.0, fast=False)
        return result, sync_setting(cur)


def test_only_a_queue_place_commits_without_a_flush(coord: Coordinator, database_url: str) -> None:
    """Granting stays durable in both paths; queueing (one call, or the full step) commits with
    synchronous_commit off; cleaning up an expired holder while queueing stays durable."""
    coord.acquire("z0", agent_id="waiter", wait=0).release()  # the agent row exists: one-call path
    granted, setting = first_request(database_url, "z1", "waiter")
    assert granted is not None and granted.grant is not None and setting == "on"
    coord.acquire("z0", agent_id="queuer", wait=0).release()
    queued, setting = first_request(database_url, "z1", "queuer")
    assert queued is not None and queued.newly_queued and queued.grant is None
    assert setting == "off"
    step, setting = full_step(database_url, "z1", "third")  # first request ever: the full step decides
    assert step.newly_queued and setting == "on"  # its agent row was created in it: durable
    step, setting = full_step(database_url, "z1", "third")  # a later poll of that waiter
    assert step.grant is None and not step.newly_queued and setting == "off"
    with psycopg.connect(database_url) as conn:  # the holder's TTL runs out
        conn.execute("UPDATE lease_holders SET expires_at = now() - interval '1 second' WHERE resource = 'z1'")
    step, setting = full_step(database_url, "z1", "third")
    assert step.expired and setting == "on"


def test_a_waiter_whose_queue_place_was_lost_queues_again_and_gets_the_lease(coord: Coordinator,
                                                                            database_url: str) -> None:
    """A crash can lose a queue place that nothing durable followed: simulated by deleting the row (the
    WAL ordering makes the LeaseWaited go with it). The waiter's next poll queues it again (a second
    LeaseWaited), and the holder's release hands the lease to it with a newer token."""
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


def test_the_release_that_serves_a_queue_place_flushes_it(coord: Coordinator, database_url: str) -> None:
    """The WAL ordering the argument rests on: after the durable release that hands the lease to a
    waiter, the server's flushed WAL covers the waiter's queueing commit (which did not flush itself)."""
    holder = coord.acquire("wal", agent_id="holder", wait=0)
    coord.acquire("z", agent_id="waiter", wait=0).release()
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        queued = leases.send_first_request(cur, "wal", "waiter", Mode.EXCLUSIVE, 9.0, False, None, 5.0)()
        assert queued is not None and queued.newly_queued
        conn.commit()
        row = cur.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
        assert row is not None
        queued_lsn = row[0]  # at or after the queueing commit's record
        conn.commit()
    holder.release()
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT pg_current_wal_flush_lsn() >= %s::pg_lsn, "
                           "(SELECT agent_id FROM lease_holders WHERE resource = 'wal')", (queued_lsn,)).fetchone()
    assert row == (True, "waiter")
