"""The coordinator on real PostgreSQL: mutual exclusion across processes, TTL expiry and fencing after a
SIGKILL, FCFS and shared mode, lock order, deadlock cycles, wait-exceeded alerts, the kill switch,
history in the lock chain, metrics and the asyncio API."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import psycopg
import pytest

from eventstore.coordination import AsyncCoordinator, Coordinator, Lease, Mode
from eventstore.core.decisions import Candidate, KnownState, decide_batch
from eventstore.core.errors import (
    AgentKilledError,
    DeadlockDetected,
    LeaseNotHeldError,
    LeaseTimeout,
    LockOrderViolation,
)
from eventstore.core.outcomes import Outcome, ReasonCode
from eventstore.postgres.leaseadmin import wait_graph
from eventstore.wire.envelope import Envelope, LeaseRef


@pytest.fixture
def coord(database_url: str) -> Iterator[Coordinator]:
    with Coordinator(database_url, detect_interval=0.1) as c:
        yield c


def history(url: str, stream: str) -> list[tuple[str, dict[str, Any], str | None, int | None]]:
    """(type, payload, lease_resource, fencing_token) of a stream, in order."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT type, payload, lease_resource, fencing_token FROM lock_history WHERE stream = %s "
            "ORDER BY log_order, n",
            (stream,)).fetchall()
    return [(str(t), dict(p), r, f) for t, p, r, f in rows]


def types(url: str, stream: str) -> list[str]:
    return [t for t, _, _, _ in history(url, stream)]


def fence_token(url: str, resource: str) -> int | None:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT fence_token FROM resources WHERE resource = %s", (resource,)).fetchone()
    return None if row is None else int(row[0])


def test_grant_release_and_history(coord: Coordinator, database_url: str) -> None:
    with coord.lease("inventory:A1", agent_id="order-agent", ttl=30, wait=1, expected_duration=5) as lease:
        assert lease.mode is Mode.EXCLUSIVE and lease.token >= 1
        assert lease.ref == LeaseRef(resource="inventory:A1", token=lease.token)
        assert fence_token(database_url, "inventory:A1") == lease.token
        [row] = coord.holders(["inventory:A1"])
        assert row["agent_id"] == "order-agent" and row["token"] == lease.token and not row["expired"]
        first = lease.token
    assert coord.holders(["inventory:A1"]) == []
    with coord.lease("inventory:A1", agent_id="other", ttl=30) as again:
        assert again.token > first
    hist = history(database_url, "lease-inventory:A1")
    assert [t for t, _, _, _ in hist] == ["LeaseGranted", "LeaseReleased", "LeaseGranted", "LeaseReleased"]
    assert hist[0][2:] == ("inventory:A1", first)
    assert hist[0][1]["agent_id"] == "order-agent"


def test_reentrant_same_token_and_release_only_by_holder(coord: Coordinator) -> None:
    outer = coord.acquire("r", agent_id="a")
    inner = coord.acquire("r", agent_id="a")
    assert inner.token == outer.token
    assert coord.holders(["r"])[0]["hold_count"] == 2
    inner.release()
    assert coord.try_acquire("r", agent_id="b") is None  # still held once
    impostor = Lease(coord, "r", "b", Mode.EXCLUSIVE, outer.token, outer.expires_at, 30.0)
    with pytest.raises(LeaseNotHeldError):
        impostor.release()
    outer.release()
    assert coord.holders(["r"]) == []
    with pytest.raises(LeaseNotHeldError):
        coord.release(Lease(coord, "r", "a", Mode.EXCLUSIVE, outer.token, outer.expires_at, 30.0))


def test_try_lease_denied_is_recorded(coord: Coordinator, database_url: str) -> None:
    with coord.lease("r", agent_id="a"), coord.try_lease("r", agent_id="b") as got:
        assert got is None
    assert types(database_url, "lease-r") == ["LeaseGranted", "LeaseDenied", "LeaseReleased"]
    snap = coord.metrics.snapshot()
    assert snap.by_pair[("r", "b")].denials == 1
    assert snap.for_resource("r").grants == 1


def test_shared_readers_share_a_token_and_a_queued_writer_is_not_starved(
        coord: Coordinator, database_url: str) -> None:
    r1 = coord.acquire("doc", agent_id="reader1", mode="shared")
    r2 = coord.acquire("doc", agent_id="reader2", mode="shared")
    assert r1.token == r2.token
    got: list[Lease] = []
    writer = threading.Thread(target=lambda: got.append(coord.acquire("doc", agent_id="writer", wait=10)))
    writer.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until the writer is queued
        with psycopg.connect(database_url) as conn:
            if conn.execute("SELECT 1 FROM lease_waiters WHERE agent_id = 'writer'").fetchone():
                break
        time.sleep(0.02)
    assert coord.try_acquire("doc", agent_id="reader3", mode="shared") is None  # queued behind the writer
    r1.release()
    r2.release()
    writer.join(10)
    assert got and got[0].token > r1.token
    got[0].release()
    assert coord.metrics.snapshot().by_pair[("doc", "writer")].waits == 1


def test_expiry_on_the_db_clock_fences_the_old_holder(coord: Coordinator, database_url: str) -> None:
    old = coord.acquire("r", agent_id="slow", ttl=0.3)
    new = coord.acquire("r", agent_id="fast", ttl=30, wait=5)  # granted once the TTL has run out
    assert new.token > old.token
    assert fence_token(database_url, "r") == new.token
    with pytest.raises(LeaseNotHeldError):
        old.renew()
    with pytest.raises(LeaseNotHeldError):
        old.release()
    new.release()
    assert types(database_url, "lease-r")[:4] == [  # the wait is chained when it ends, with its grant (0013)
        "LeaseGranted", "LeaseExpired", "LeaseWaited", "LeaseGranted"]
    assert coord.metrics.snapshot().by_pair[("r", "slow")].expiries_while_held == 1


def test_renew_and_keep_alive(coord: Coordinator, database_url: str) -> None:
    lease = coord.acquire("r", agent_id="a", ttl=1.5, keep_alive=True)
    before = lease.expires_at
    time.sleep(3.1)  # two TTLs: only the keep-alive thread (renewing every 0.5 s) keeps it
    assert coord.try_acquire("r", agent_id="b") is None
    assert not lease.lost and lease.expires_at > before
    assert lease.renew(5) > before
    lease.release()
    assert "LeaseRenewed" in types(database_url, "lease-r")


def _count_under_lease(url: str, agent: str, rounds: int) -> None:
    """Worker process: read a counter, pause, write counter+1 with the token, all under the lease."""
    with Coordinator(url) as c, psycopg.connect(url, autocommit=True) as conn:
        for _ in range(rounds):
            with c.lease("counter", agent_id=agent, ttl=20, wait=60) as lease:
                row = conn.execute("SELECT n FROM counter WHERE id = 1").fetchone()
                assert row is not None
                time.sleep(0.01)
                conn.execute("UPDATE counter SET n = %s WHERE id = 1", (row[0] + 1,))
                conn.execute("INSERT INTO checks (n, token, agent) VALUES (%s, %s, %s)",
                             (row[0] + 1, lease.token, agent))


def test_mutual_exclusion_across_twelve_processes(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL)")
        conn.execute("INSERT INTO counter VALUES (1, 0)")
        conn.execute("CREATE TABLE checks (n int NOT NULL, token bigint NOT NULL, agent text NOT NULL)")
    ctx = multiprocessing.get_context("spawn")
    agents, rounds = 12, 3
    procs = [ctx.Process(target=_count_under_lease, args=(database_url, f"agent-{i}", rounds))
             for i in range(agents)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * agents
    with psycopg.connect(database_url) as conn:
        (n,) = conn.execute("SELECT n FROM counter").fetchone()  # type: ignore[misc]
        checks = conn.execute("SELECT n, token FROM checks ORDER BY n").fetchall()
        (grants,) = conn.execute(  # type: ignore[misc]
            "SELECT count(*) FROM lock_events WHERE stream = 'lease-counter' AND type = 'LeaseGranted'").fetchone()
    assert n == agents * rounds == grants
    assert [c[0] for c in checks] == list(range(1, n + 1))  # no lost update, no duplicate
    tokens = [c[1] for c in checks]
    assert all(a < b for a, b in itertools.pairwise(tokens))


def _hold_and_hang(url: str, out: Any) -> None:
    """Worker process: take a short lease, report its token, then hang until SIGKILLed."""
    c = Coordinator(url)
    lease = c.acquire("fenced", agent_id="doomed", ttl=1.0)
    out.put(lease.token)
    time.sleep(120)


def test_sigkilled_holder_is_replaced_after_ttl_and_fenced(database_url: str, coord: Coordinator) -> None:
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_hold_and_hang, args=(database_url, q))
    p.start()
    dead_token = int(q.get(timeout=60))
    assert p.pid is not None
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    q.close()
    q.join_thread()
    successor = coord.acquire("fenced", agent_id="successor", ttl=10, wait=10)
    assert successor.token > dead_token
    assert fence_token(database_url, "fenced") == successor.token
    hist = history(database_url, "lease-fenced")
    assert [t for t, _, _, _ in hist][-3:] == ["LeaseExpired", "LeaseWaited", "LeaseGranted"]
    with psycopg.connect(database_url) as conn:
        granted = conn.execute(
            "SELECT recorded_at FROM lock_events WHERE stream = 'lease-fenced' AND type = 'LeaseGranted' "
            "ORDER BY chain_seq").fetchall()
    # On the DB clock, after the TTL (the first grant's event is appended a few ms after its expiry was set).
    assert granted[1][0] - granted[0][0] >= timedelta(seconds=0.9)
    late_write = Envelope(event_id=uuid.uuid4(), idempotency_key="late", stream="inv", agent_id="doomed",
                          correlation_id=uuid.uuid4(), type="Any", schema_version=1, payload={},
                          lease=LeaseRef(resource="fenced", token=dead_token))
    newest = fence_token(database_url, "fenced")
    assert newest is not None
    known = KnownState({}, {}, fence_tokens={"fenced": newest})
    [decision] = decide_batch([Candidate(late_write, b"i")], known)
    assert decision.status is Outcome.REJECTED and decision.code is ReasonCode.LEASE_STALE
    successor.release()


def test_lock_order_violation_is_raised_and_recorded(coord: Coordinator, database_url: str) -> None:
    with coord.lease("b", agent_id="a"):
        with pytest.raises(LockOrderViolation) as e:
            coord.acquire("a", agent_id="a")
        assert (e.value.requested, e.value.held) == ("a", "b")
        with coord.lease("c", agent_id="a"):
            pass  # in order: fine
    [(t, payload, _, _)] = history(database_url, "agent-a")
    assert t == "LockOrderViolated" and payload["requested"] == "a" and payload["held"] == "b"
    assert coord.metrics.snapshot().for_agent("a").order_violations == 1
    with coord.lease_many(["c", "a", "b"], agent_id="a") as taken:
        assert [x.resource for x in taken] == ["a", "b", "c"]
    assert coord.holders() == []


def test_lease_many_with_a_configured_rank(database_url: str) -> None:
    rank = {"orders": 0, "inventory": 1}.__getitem__
    with Coordinator(database_url, rank=rank) as c:
        with c.lease_many(["inventory", "orders"], agent_id="a") as taken:
            assert [x.resource for x in taken] == ["orders", "inventory"]
        with c.lease("inventory", agent_id="a"), pytest.raises(LockOrderViolation):
            c.acquire("orders", agent_id="a")


def _cycle(coord: Coordinator, n: int) -> tuple[list[str], list[str]]:
    """n agents in a ring: agent i holds r{i} and then asks for r{i+1}. Returns (victims, finishers)."""
    barrier = threading.Barrier(n)
    victims: list[str] = []
    finished: list[str] = []

    def run(i: int) -> None:
        agent = f"agent-{i}"
        with coord.lease(f"r{i}", agent_id=agent, ttl=30):
            barrier.wait(10)
            time.sleep(0.05 * i)  # distinct enqueue times: agent-{n-1} is the youngest waiter
            try:
                with coord.lease(f"r{(i + 1) % n}", agent_id=agent, ttl=30, wait=8):
                    finished.append(agent)
            except DeadlockDetected:
                victims.append(agent)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return victims, finished


@pytest.mark.parametrize("n", [2, 3])
def test_deadlock_cycle_is_broken_by_one_victim(database_url: str, n: int) -> None:
    # Ordering is off: the cycle is the point (as with clients that do not use lease_many).
    with Coordinator(database_url, enforce_lock_order=False, detect_interval=0.1) as c:
        victims, finished = _cycle(c, n)  # wait=8: a LeaseTimeout instead would mean detection failed
        assert victims == [f"agent-{n - 1}"]  # the documented rule: youngest waiter
        assert sorted(finished) == [f"agent-{i}" for i in range(n - 1)]
        assert c.metrics.snapshot().for_agent(f"agent-{n - 1}").deadlocks == 1
    found = [p for t, p, _, _ in history(database_url, f"lease-r{0}") if t == "DeadlockFound"]
    assert len(found) == 1 and found[0]["victim"] == f"agent-{n - 1}" and len(found[0]["cycle"]) == n


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []
    arrived = threading.Event()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        type(self).arrived.set()
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_wait_exceeded_alert_goes_to_webhook_and_event_log(database_url: str) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/alerts"
        with Coordinator(database_url, alert_webhook=url) as c, c.lease("busy", agent_id="holder"):
            with pytest.raises(LeaseTimeout):
                c.acquire("busy", agent_id="patient", wait=1.0, expected_duration=0.2)
            assert _Hook.arrived.wait(5)
            assert c.metrics.snapshot().by_pair[("busy", "patient")].wait_exceeded == 1
    finally:
        server.shutdown()
        server.server_close()
    [alert] = _Hook.received
    assert alert["type"] == "WaitExceeded" and alert["payload"]["agent_id"] == "patient"
    assert alert["payload"]["held_by"] == ["holder"]
    assert types(database_url, "lease-busy") == [
        "LeaseGranted", "WaitExceeded", "LeaseWaited", "LeaseDenied", "LeaseReleased"]


def test_webhook_failure_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    from eventstore.coordination.alerts import Alerter
    from eventstore.core.lockevents import AgentRevived

    with caplog.at_level(logging.ERROR, logger="eventstore.coordination.alerts"):
        assert Alerter("http://127.0.0.1:9/nowhere", timeout=0.5).post(AgentRevived(agent_id="x")) is False
    [record] = [r for r in caplog.records if r.name == "eventstore.coordination.alerts"]
    assert record.levelno == logging.ERROR
    # The logged line is what an operator reads: it names the webhook and the alert that was lost.
    assert "http://127.0.0.1:9/nowhere" in record.getMessage() and "AgentRevived" in record.getMessage()


def test_kill_switch_revokes_fences_blocks_and_revive_restores(coord: Coordinator, database_url: str) -> None:
    x = coord.acquire("x", agent_id="rogue")
    y = coord.acquire("y", agent_id="rogue")
    assert sorted(coord.kill("rogue", "unresponsive")) == ["x", "y"]
    assert coord.holders() == []
    assert (fence_token(database_url, "x") or 0) > x.token and (fence_token(database_url, "y") or 0) > y.token
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT status, reason FROM agents WHERE agent_id = 'rogue'").fetchone() == (
            "killed", "unresponsive")
    with pytest.raises(AgentKilledError):
        coord.acquire("z", agent_id="rogue")
    with pytest.raises(LeaseNotHeldError):
        x.release()
    assert types(database_url, "agent-rogue") == ["AgentKilled"]
    assert types(database_url, "lease-x")[-1] == "LeaseRevoked"
    other = coord.acquire("x", agent_id="good", wait=1)  # revoked means free
    other.release()
    assert coord.revive("rogue")
    coord.acquire("z", agent_id="rogue").release()
    assert types(database_url, "agent-rogue") == ["AgentKilled", "AgentRevived"]
    assert coord.metrics.snapshot().for_agent("rogue").revocations == 2


def test_metrics_snapshot_and_prometheus_text(coord: Coordinator, database_url: str) -> None:
    with coord.lease("m", agent_id="a"):
        assert coord.try_acquire("m", agent_id="b") is None
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO outcomes (event_id, agent_id, status, reason, reason_code) "
            "VALUES (%s, 'b', 'rejected', %s, 'lease_stale')",
            (uuid.uuid4(), "stale lease on 'm': token 1 is older than the newest grant 2"))
    assert coord.refresh_fence_rejections() == {"b": 1}
    snap = coord.metrics.snapshot()
    assert snap.by_pair[("m", "a")].releases == 1 and snap.fence_rejections == {"b": 1}
    text = coord.metrics_text().decode()
    assert 'eventstore_lease_hold_seconds_count{agent="a",resource="m"} 1.0' in text
    assert 'eventstore_lease_denials_total{agent="b",resource="m"} 1.0' in text
    assert 'eventstore_fence_rejections{agent="b"} 1.0' in text


def test_asyncio_variants(database_url: str) -> None:
    async def main() -> list[int]:
        async with AsyncCoordinator(database_url) as ac:
            order: list[int] = []

            async def worker(i: int) -> None:
                async with ac.lease("async", agent_id=f"t{i}", wait=10) as lease:
                    order.append(lease.token)
                    await asyncio.sleep(0.02)

            await asyncio.gather(*(worker(i) for i in range(4)))
            async with ac.lease("async", agent_id="t0"):
                assert await ac.try_acquire("async", agent_id="t1") is None
            async with ac.lease_many(["q", "p"], agent_id="t0") as taken:
                assert [x.resource for x in taken] == ["p", "q"]
            return order

    tokens = asyncio.run(main())
    assert len(tokens) == 4 and len(set(tokens)) == 4


@pytest.mark.parametrize(("pipeline", "sync"), [(True, True), (False, False)])
def test_pipeline_and_async_commit_options_behave_the_same(database_url: str, pipeline: bool, sync: bool) -> None:
    with Coordinator(database_url, pipeline=pipeline, synchronous_commit=sync) as c:
        with c.lease("o", agent_id="a") as lease:
            assert c.try_acquire("o", agent_id="b") is None
            again = c.acquire("o", agent_id="a")
            assert again.token == lease.token
            again.release()
        with pytest.raises(LeaseNotHeldError):
            lease.release()
        assert c.holders() == []
    assert types(database_url, "lease-o") == ["LeaseGranted", "LeaseDenied", "LeaseReleased"]


def test_abandoned_waiter_of_a_crashed_process_does_not_block_the_queue(
        coord: Coordinator, database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO lease_waiters (resource, agent_id, mode, enqueued_at, heartbeat_at) "
            "VALUES ('q', 'ghost', 'exclusive', now() - interval '1 hour', now() - interval '1 hour')")
    lease = coord.acquire("q", agent_id="live", wait=0)  # the ghost's stale place is purged, not waited for
    lease.release()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM lease_waiters").fetchone() == (0,)


def test_a_waiting_agent_that_is_killed_stops_waiting(coord: Coordinator) -> None:
    errors: list[BaseException] = []

    def wait_for_it() -> None:
        try:
            coord.acquire("k", agent_id="victim", wait=10)
        except AgentKilledError as e:
            errors.append(e)

    with coord.lease("k", agent_id="holder"):
        t = threading.Thread(target=wait_for_it)
        t.start()
        deadline = time.monotonic() + 10
        while not _queued(coord, "victim") and time.monotonic() < deadline:
            time.sleep(0.02)
        # Only a kill of an agent that really waits tests the claim; one that never queued proves nothing.
        assert _queued(coord, "victim"), "the agent never queued for 'k' within 10 s"
        coord.kill("victim", "test")
        t.join(10)
    assert not t.is_alive(), "the killed agent is still waiting"
    assert len(errors) == 1 and isinstance(errors[0], AgentKilledError)
    assert "kill switch" in str(errors[0])  # the text is the feature: the agent is told why it stopped


def _queued(coord: Coordinator, agent: str) -> bool:
    _, waiters = coord.run_step(lambda cur: wait_graph(cur, 5.0))
    return any(w.agent_id == agent for w in waiters)


def test_bad_requests_are_refused_before_touching_the_database(coord: Coordinator) -> None:
    from eventstore.core.errors import ConfigurationError, InvalidEventError

    with pytest.raises(ConfigurationError):
        coord.acquire("r", agent_id="a", ttl=0)
    with pytest.raises(ConfigurationError):
        coord.acquire("r", agent_id="a", wait=-1)
    with pytest.raises(InvalidEventError):
        coord.acquire("", agent_id="a")
    with pytest.raises(InvalidEventError):
        coord.acquire("r", agent_id="bad\nid")
    with pytest.raises(ConfigurationError):
        coord.kill("a", "")
    assert coord.revive("never-seen") is False


def test_cancelled_async_waiter_leaves_the_queue(database_url: str) -> None:
    async def main() -> None:
        async with AsyncCoordinator(database_url) as ac, ac.lease("c", agent_id="holder"):
            task = asyncio.create_task(ac.acquire("c", agent_id="impatient", wait=30))
            for _ in range(500):
                if await asyncio.to_thread(_queued, ac.sync, "impatient"):
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    denied = [p for t, p, _, _ in history(database_url, "lease-c") if t == "LeaseDenied"]
    assert [d["reason"] for d in denied] == ["interrupted: CancelledError"]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM lease_waiters").fetchone() == (0,)
