"""A wait is chained when it ends (migration 0013, issue 11 aim 4 round 5): one LeaseWaited per served or
abandoned wait, in the same commit as what ended it and right before its grant; FIFO and strictly
increasing fencing tokens with 16 agents at once; a waiter that gives up or is killed has its wait chained."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from eventstore.bench.leaserun import queue_order
from eventstore.bench.leasetimeline import timeline
from eventstore.coordination import Coordinator
from eventstore.core.errors import AgentKilledError, LeaseTimeout
from eventstore.core.lockevents import LeaseGranted, LeaseWaited


@pytest.fixture
def coord(database_url: str) -> Iterator[Coordinator]:
    with Coordinator(database_url, detect_interval=0.1, pool_size=16) as c:
        yield c


def history(url: str, stream: str) -> list[tuple[str, str, str, str, int | None]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT type, agent_id, xmin::text, payload, fencing_token FROM lock_events "
                            "WHERE stream = %s ORDER BY chain_seq", (stream,)).fetchall()


def test_sixteen_agents_keep_fifo_tokens_and_one_wait_record_per_wait(coord: Coordinator, database_url: str) -> None:
    per_agent, errors = 4, []
    start = threading.Barrier(16)

    def run(i: int) -> None:
        try:
            start.wait(30)
            for n in range(per_agent):
                with coord.lease(f"fifo{(i + n) % 4}", agent_id=f"a{i}", ttl=30, wait=60):
                    time.sleep(0.002)
        except Exception as e:  # reported below; a thread cannot fail the test itself
            errors.append(e)

    threads: list[threading.Thread] = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    waits = grants_after_wait = 0
    for r in range(4):
        rows = history(database_url, f"lease-fifo{r}")
        tokens = [int(tok or 0) for kind, _, _, _, tok in rows if kind == "LeaseGranted"]
        assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)  # strictly increasing
        for i, (kind, agent, xid, payload, _) in enumerate(rows):
            if kind == "LeaseWaited":
                waits += 1
                wait = LeaseWaited.model_validate_json(payload)
                nkind, nagent, nxid, npayload, _ = rows[i + 1]
                # served: the very next row is its grant, in the same transaction
                assert (nkind, nagent, nxid) == ("LeaseGranted", agent, xid)
                granted = LeaseGranted.model_validate_json(npayload)
                assert wait.ended in ("granted", "handed_off") and wait.queue_seq is not None
                assert wait.waited_seconds is not None and abs(wait.waited_seconds - granted.waited_seconds) < 0.05
            elif kind == "LeaseGranted" and LeaseGranted.model_validate_json(payload).waited_seconds > 0:
                grants_after_wait += 1
                assert rows[i - 1][0] == "LeaseWaited"
    assert waits == grants_after_wait > 0  # exactly one LeaseWaited per served wait
    past, checked = queue_order(database_url, "fifo")
    assert (past, checked) == (0, 16 * per_agent), [history(database_url, f"lease-fifo{r}") for r in range(4)]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM lease_waiters").fetchone() == (0,)
        chain: list[Any] = conn.execute(
            "SELECT xmin::text, stream, type, agent_id, recorded_at, (payload::jsonb ->> 'enqueued_at')::timestamptz "
            "FROM lock_events WHERE stream LIKE 'lease-fifo%' ORDER BY chain_seq").fetchall()
    line = timeline(chain)
    assert line.queue_only == 0 and line.grants == 16 * per_agent and len(line.queued_to_granted) == waits
    # a contended request costs about one chained commit (the grant: a hand-off shares the release's)
    assert line.transactions <= 2 * line.grants


def test_a_waiter_that_times_out_chains_its_wait_with_its_denial(coord: Coordinator, database_url: str) -> None:
    holder = coord.acquire("gives-up", agent_id="holder", wait=0)
    with pytest.raises(LeaseTimeout):
        coord.acquire("gives-up", agent_id="waiter", wait=0.3)
    holder.release()
    rows = history(database_url, "lease-gives-up")
    assert [(k, a) for k, a, _, _, _ in rows] == [
        ("LeaseGranted", "holder"), ("LeaseWaited", "waiter"), ("LeaseDenied", "waiter"), ("LeaseReleased", "holder")]
    assert rows[1][2] == rows[2][2]  # one transaction
    wait = LeaseWaited.model_validate_json(rows[1][3])
    assert wait.ended == "left" and wait.held_by == ["holder"] and (wait.waited_seconds or 0) >= 0.25


def test_a_killed_waiter_has_its_wait_chained_with_the_revocation(coord: Coordinator, database_url: str) -> None:
    holder = coord.acquire("killed-wait", agent_id="holder", wait=0)
    failed: list[BaseException] = []

    def wait() -> None:
        try:
            coord.acquire("killed-wait", agent_id="victim", wait=30)
        except AgentKilledError as e:
            failed.append(e)

    t = threading.Thread(target=wait)
    t.start()
    deadline = time.monotonic() + 30
    with psycopg.connect(database_url, autocommit=True) as conn:
        while conn.execute("SELECT count(*) FROM lease_waiters").fetchone() == (0,) and time.monotonic() < deadline:
            time.sleep(0.01)
    coord.kill("victim", "test")
    t.join(30)
    assert failed and not t.is_alive()
    holder.release()
    rows = history(database_url, "lease-killed-wait")
    waited = [(a, LeaseWaited.model_validate_json(p).ended) for k, a, _, p, _ in rows if k == "LeaseWaited"]
    # the kill's revocation, or the waiter's own poll between the kill's two steps, ends the wait: once
    assert waited in ([("victim", "revoked")], [("victim", "killed")])
    assert [k for k, _, _, _, _ in rows] == ["LeaseGranted", "LeaseWaited", "LeaseReleased"]


def test_an_abandoned_wait_is_chained_when_it_is_purged(coord: Coordinator, database_url: str) -> None:
    """A waiter whose process died (its heartbeat went stale) is purged by the next full step, which chains
    its wait (``purged``) in the same commit as what that step decided."""
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO agents (agent_id) VALUES ('ghost') ON CONFLICT DO NOTHING")
        conn.execute("INSERT INTO lease_waiters (resource, agent_id, mode, enqueued_at, heartbeat_at, ttl_seconds, "
                     "held_by) VALUES ('purge', 'ghost', 'exclusive', clock_timestamp() - interval '1 minute', "
                     "clock_timestamp() - interval '1 minute', 5, '{someone}')")
    coord.acquire("purge", agent_id="next", wait=5).release()
    rows = history(database_url, "lease-purge")
    assert [(k, a) for k, a, _, _, _ in rows] == [
        ("LeaseWaited", "ghost"), ("LeaseGranted", "next"), ("LeaseReleased", "next")]
    assert rows[0][2] == rows[1][2]
    wait = LeaseWaited.model_validate_json(rows[0][3])
    assert wait.ended == "purged" and wait.held_by == ["someone"] and (wait.waited_seconds or 0) >= 59
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM lease_waiters").fetchone() == (0,)


def test_a_wait_purged_by_a_prefetching_grant_is_chained(database_url: str) -> None:
    """The prefetching first request (``prefetch=True``: the one-call grant sent together with the full step's
    snapshot) runs the snapshot's purge even when the one-call grant succeeds; the waits it purged end in that
    commit and are chained there, not lost (a wait is chained only when it ends, migration 0013)."""
    from eventstore.core.lockrules import Mode
    from eventstore.postgres import leases

    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO agents (agent_id) VALUES ('head'), ('ghost') ON CONFLICT DO NOTHING")
        # 'head' is first in the queue of a free resource; 'ghost' behind it stopped polling a minute ago.
        conn.execute("INSERT INTO lease_waiters (resource, agent_id, mode, enqueued_at, heartbeat_at, ttl_seconds) "
                     "VALUES ('prefetch', 'head', 'exclusive', clock_timestamp(), clock_timestamp(), 5)")
        conn.execute("INSERT INTO lease_waiters (resource, agent_id, mode, enqueued_at, heartbeat_at, ttl_seconds) "
                     "VALUES ('prefetch', 'ghost', 'exclusive', clock_timestamp() - interval '1 minute', "
                     "clock_timestamp() - interval '1 minute', 5)")
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        got = leases.attempt(cur, "prefetch", "head", Mode.EXCLUSIVE, 5.0, queue=True, expected=None,
                             stale_after=10.0, fast=True, prefetch=True)
        assert got.grant is not None, got
    rows = history(database_url, "lease-prefetch")
    kinds = [(k, a) for k, a, _, _, _ in rows]
    assert ("LeaseGranted", "head") in kinds and ("LeaseWaited", "ghost") in kinds, kinds
    assert len({x for _, _, x, _, _ in rows}) == 1  # one transaction: the grant and the purged wait
    ghost = next(LeaseWaited.model_validate_json(p) for k, a, _, p, _ in rows if (k, a) == ("LeaseWaited", "ghost"))
    assert ghost.ended == "purged" and (ghost.waited_seconds or 0) >= 59
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT agent_id FROM lease_waiters").fetchall() == []
