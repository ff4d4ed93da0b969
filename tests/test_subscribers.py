"""Committed events for everyone (promises 3, 4, 6): the committed topic, subscribers, local views,
catch-up from PostgreSQL, read-your-writes and the rejections topic, on real servers."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from consumers import LocalView, SQLiteView, Subscriber
from consumers.checkpoints import MemoryCheckpoint
from eventstore import AgentClient, Outcome, Projector
from eventstore.core.records import DirectEvent
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryAdjusted, InventoryUpdated, quantity_reducer, stream_for
from eventstore.postgres.eventlog import append_direct, read_all
from eventstore.projection.publisher import Publisher
from eventstore.wire.committed import decode_committed
from tests.fix_projector import scalar, settings_env, wait_until


def topic_messages(settings: Settings, topic: str, expect: int, timeout: float = 30) -> list[bytes]:
    """Every message value on partition 0 of a topic, waiting until at least ``expect`` are there."""
    _, kafka = settings.require_servers()
    c = Consumer({"bootstrap.servers": kafka, "group.id": "reader", "fetch.wait.max.ms": 10})
    c.assign([TopicPartition(topic, 0, 0)])
    values: list[bytes] = []

    def read() -> bool:
        values.extend(m.value() or b"" for m in c.consume(500, 0.2) if not m.error())
        return len(values) >= expect

    try:
        wait_until(read, timeout, f"{expect} messages on {topic}")
        time.sleep(0.3)
        read()
    finally:
        c.close()
    return values


def read_model(db: str) -> dict[str, int]:
    with psycopg.connect(db) as conn:
        return {f"inventory-{sku}": q for sku, q in conn.execute("SELECT sku, quantity FROM inventory")}


def test_only_committed_events_reach_the_committed_topic_in_position_order(settings: Settings,
                                                                             projector: Projector) -> None:
    with AgentClient("mixed", settings) as c:
        assert c.emit_and_wait(InventoryUpdated(sku="C", quantity=5), stream_for("C"), expected_version=0,
                               idempotency_key="c1").status is Outcome.COMMITTED
        assert c.emit_and_wait(InventoryUpdated(sku="C", quantity=6), stream_for("C"), expected_version=0
                               ).status is Outcome.CONFLICT
        assert c.emit_and_wait(InventoryUpdated(sku="C", quantity=5), stream_for("C"),
                               idempotency_key="c1").status is Outcome.DUPLICATE
        assert c.emit_and_wait(InventoryUpdated(sku="C", quantity=9), stream_for("C"),
                               idempotency_key="c1").status is Outcome.REJECTED
        assert c.emit_and_wait(InventoryAdjusted(sku="C", delta=-1), stream_for("C"), expected_version=1
                               ).status is Outcome.COMMITTED
    events = [decode_committed(v) for v in topic_messages(settings, settings.committed_topic, 2)]
    assert [(e.position, e.version, e.payload) for e in events] == [
        (1, 1, {"sku": "C", "quantity": 5}), (2, 2, {"sku": "C", "delta": -1})]
    rejections = [json.loads(v) for v in topic_messages(settings, settings.rejections_topic, 2)]
    assert [r["type"] for r in rejections] == ["EventConflicted", "IdempotencyKeyReused"]
    assert rejections[0]["payload"]["expected_version"] == 0 and rejections[0]["payload"]["actual_version"] == 1
    assert rejections[1]["payload"]["original_position"] == 1


def test_a_late_commit_cannot_carry_a_lower_position(settings: Settings) -> None:
    """The trap of sequence-based logs: transaction A starts appending first, B commits first. With the
    log-head lock B waits for A, so positions follow commit order and a tailing subscriber skips nothing."""
    db = settings.require_database()
    publisher = Publisher(settings).start()
    view = LocalView()
    sub = Subscriber("tail", view=view, settings=settings, catch_up_from_db=False).start()
    try:
        a = psycopg.connect(db)
        a_cur = a.cursor()
        (first,) = append_direct(a_cur, [DirectEvent("trap-a", InventoryUpdated(sku="A", quantity=1), "agent-a")])
        b_done = threading.Event()
        b_position: list[int] = []

        def appender_b() -> None:
            with psycopg.connect(db) as b, b.cursor() as cur:
                (ev,) = append_direct(cur, [DirectEvent("trap-b", InventoryUpdated(sku="B", quantity=1), "agent-b")])
                b.commit()
                b_position.append(ev.position)
                b_done.set()

        threading.Thread(target=appender_b, daemon=True).start()
        assert not b_done.wait(1.0), "B must wait for A's append lock"
        assert view.position == 0 and scalar(db, "SELECT count(*) FROM events") == 0
        a.commit()
        a.close()
        assert b_done.wait(10)
        assert first.position == 1 and b_position == [2]
        view.wait_for_position(2, 15)
        assert [s.position for s in sorted(view.streams().values(), key=lambda s: s.position)] == [1, 2]
        assert sub.backfilled == 0 and sub.repeats_dropped == 0
    finally:
        sub.stop()
        publisher.stop()


def test_a_run_the_view_already_holds_moves_the_subscriber_on_without_applying_it(settings: Settings) -> None:
    """A checkpoint behind its view (a crash after the view's commit, before the checkpoint's save): Kafka's
    messages the view already holds are dropped by the stream-version check, and the subscriber still moves
    to their position (it used to fail on the empty batch and stop there on every restart)."""
    db = settings.require_database()
    with psycopg.connect(db) as conn, conn.cursor() as cur:
        for i in range(6):
            append_direct(cur, [DirectEvent(stream_for(f"H{i % 2}"), InventoryAdjusted(sku=f"H{i % 2}", delta=1), "h")])
    publisher = Publisher(settings).start()
    try:
        view = LocalView(quantity_reducer)
        checkpoint = MemoryCheckpoint()
        with Subscriber("ahead", view=view, settings=settings, checkpoint=checkpoint, catch_up_from_db=False):
            view.wait_for_position(6, 30)
        before = {s: st.state for s, st in view.streams().items()}
        assert before == {stream_for("H0"): 3, stream_for("H1"): 3} and checkpoint.load() == 6
        checkpoint.save(3)  # the view holds 1..6, the checkpoint says 3
        with Subscriber("ahead", view=view, settings=settings, checkpoint=checkpoint,
                        catch_up_from_db=False) as sub:
            wait_until(lambda: sub.last == 6 or sub.error is not None, 30, "the subscriber to move to 6")
            assert sub.error is None, sub.error
        assert {s: st.state for s, st in view.streams().items()} == before, "applied twice"
        assert (sub.last, checkpoint.load(), sub.applied) == (6, 6, 0)
    finally:
        publisher.stop()


def test_subscriber_catches_up_from_postgres_when_kafka_lacks_the_start(settings: Settings) -> None:
    """The topic starts at position 31 (as after retention); a subscriber from the beginning reads
    1..30 from PostgreSQL and the rest from Kafka, without gap or repeat."""
    db = settings.require_database()
    with Projector(settings, publish=False) as p, AgentClient("early", settings) as c:
        assert p.ready.wait(30)
        handles = [c.emit(InventoryAdjusted(sku=f"L{i % 3}", delta=1), stream_for(f"L{i % 3}")) for i in range(30)]
        assert all(h.result(30).ok for h in handles)
        publisher = Publisher(settings, start_after=30).start()
        try:
            more = [c.emit(InventoryAdjusted(sku=f"L{i % 3}", delta=2), stream_for(f"L{i % 3}")) for i in range(30)]
            assert all(h.result(30).ok for h in more)
            published = topic_messages(settings, settings.committed_topic, 30)
            assert decode_committed(published[0]).position == 31
            # From Kafka first: the gap before position 31 is read from PostgreSQL.
            # Catch-up first (the default): everything up to the head comes from PostgreSQL, then live.
            for from_db, from_postgres in ((False, 30), (True, 60)):
                view = LocalView(quantity_reducer)
                with Subscriber(f"late-{from_db}", view=view, settings=settings, catch_up_from_db=from_db) as sub:
                    view.wait_for_position(60, 30)
                assert {s: st.state for s, st in view.streams().items()} == read_model(db)
                assert (sub.backfilled, sub.repeats_dropped, sub.applied) == (from_postgres, 0, 60)
        finally:
            publisher.stop()


def test_a_subscriber_started_before_the_committed_topic_exists_waits_for_it(settings: Settings) -> None:
    """Started before any projector (the broker has no committed topic yet), a subscriber neither stops
    nor misses anything: it applies what the log already holds, then goes live once the topic exists."""
    _, kafka = settings.require_servers()
    with Consumer({"bootstrap.servers": kafka, "group.id": "probe"}) as probe:
        assert settings.committed_topic not in probe.list_topics(timeout=10).topics
    with psycopg.connect(settings.require_database()) as conn, conn.cursor() as cur:
        append_direct(cur, [DirectEvent(stream_for("W1"), InventoryUpdated(sku="W1", quantity=4), "seeder")])
    view = LocalView(quantity_reducer)
    with Subscriber("early-bird", view=view, settings=settings, idle_check=0.5) as sub:
        view.wait_for_position(1, 30)  # from the log, while the topic is missing
        assert not sub.live.is_set() and sub.error is None
        with Projector(settings) as p, AgentClient("late-agent", settings) as c:
            assert p.ready.wait(30)
            assert c.emit_and_wait(InventoryAdjusted(sku="W1", delta=-1), stream_for("W1"), timeout=30).ok
            view.wait_for_position(2, 30)
            wait_until(sub.live.is_set, 30, "the subscriber following the committed topic")
        assert sub.error is None
    assert view.get(stream_for("W1")).state == 3  # type: ignore[union-attr]


def test_agent_sees_a_restock_as_soon_as_it_commits_and_retries_on_conflict(settings: Settings,
                                                                            projector: Projector) -> None:
    """The founding document's first scenario: the order agent reads stock 0 while a restock of 3 is
    in flight. With a local view of committed events it waits for the restock instead of turning the
    customer away, then sells through retry_on_conflict while a competitor sells too."""
    stream = stream_for("R1")
    with AgentClient("order-agent", settings) as order, AgentClient("supplier-feed", settings) as supplier, \
            AgentClient("rival", settings) as rival:
        view = order.follow("inventory-", reducer=quantity_reducer)
        assert view.get(stream) is None  # nothing committed: stock 0
        threading.Timer(0.5, lambda: supplier.emit_and_wait(InventoryUpdated(sku="R1", quantity=3), stream)).start()
        seen = view.wait_until(stream, lambda st: st.state > 0, timeout=20)
        assert (seen.state, seen.version) == (3, 1)
        assert rival.emit_and_wait(InventoryAdjusted(sku="R1", delta=-1), stream, expected_version=1).ok
        decisions: list[int] = []

        def sell_two(st: object) -> InventoryAdjusted | None:
            q = getattr(st, "state", 0) or 0
            decisions.append(q)
            return InventoryAdjusted(sku="R1", delta=-2) if q >= 2 else None

        r = order.retry_on_conflict(stream, sell_two, attempts=3)
        assert r is not None and r.status is Outcome.COMMITTED and r.version == 3
        assert decisions[-1] == 2
        assert view.get(stream, min_position=r.position) is not None
        assert view.get(stream, min_position=r.position).state == 0  # type: ignore[union-attr]
        assert order.retry_on_conflict(stream, sell_two) is None  # sold out: the agent gives up cleanly


def test_read_your_writes_everywhere(settings: Settings, projector: Projector) -> None:
    db = settings.require_database()
    with AgentClient("writer", settings) as c:
        view = c.follow()
        r = c.emit_and_wait(InventoryUpdated(sku="RYW", quantity=7), stream_for("RYW"))
        assert r.position is not None
        assert view.get(stream_for("RYW"), min_position=r.position, timeout=10).state["quantity"] == 7  # type: ignore[union-attr]
        assert [e.position for e in c.read_stream(stream_for("RYW"), min_position=r.position)] == [r.position]
        c.wait_for_position(r.position)
        assert scalar(db, "SELECT quantity FROM inventory WHERE sku = 'RYW'") == 7
        with pytest.raises(Exception, match="not yet"):
            c.wait_for_position(r.position + 1000, timeout=0.3)


@pytest.fixture
def follower(settings: Settings, tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        p = subprocess.Popen([sys.executable, "-m", "eventstore.cli", "follow", "--group", "killable",
                              "--view-file", str(tmp_path / "view.sqlite"),
                              "--reducer", "eventstore.examples.inventory:quantity_reducer"],
                             env=settings_env(settings), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


@pytest.mark.slow
def test_subscriber_sigkilled_and_restarted_has_no_gap_and_no_double_apply(
    settings: Settings, projector: Projector, follower: Callable[[], subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    db, path = settings.require_database(), tmp_path / "view.sqlite"

    def view_position() -> int:
        if not path.exists():
            return 0
        with sqlite3.connect(path) as conn:
            try:
                row = conn.execute("SELECT position FROM view_position").fetchone()
            except sqlite3.OperationalError:
                return 0
        return int(row[0]) if row else 0

    stop = threading.Event()
    sent = [0]

    def feed() -> None:
        with AgentClient("feeder", settings) as c:
            i = 0
            while not stop.is_set():
                c.emit(InventoryAdjusted(sku=f"K{i % 20}", delta=1), stream_for(f"K{i % 20}"))
                i += 1
                if i % 50 == 0:
                    c.flush()
                    time.sleep(0.02)
            c.flush()
            sent[0] = i

    feeder = threading.Thread(target=feed)
    feeder.start()
    first = follower()
    wait_until(lambda: view_position() > 300, 60, "the subscriber to apply some events")
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = view_position()
    time.sleep(0.5)
    follower()
    time.sleep(1.0)
    stop.set()
    feeder.join(30)
    # The projector may still be working off the feeder's backlog: the head to reach is the final one.
    wait_until(lambda: scalar(db, "SELECT count(*) FROM events WHERE agent_id = 'feeder'") == sent[0], 60,
               "the projector to commit everything the feeder sent")
    head = scalar(db, "SELECT position FROM log_head")
    assert head > killed_at
    wait_until(lambda: view_position() == head, 60, "the restarted subscriber to reach the head")
    with sqlite3.connect(path) as lite:
        rows = lite.execute("SELECT stream, version, state, applied FROM view_streams").fetchall()
    assert all(applied == version for _, version, _, applied in rows), "an event was applied twice or skipped"
    assert {s: json.loads(state) for s, _, state, _ in rows} == read_model(db)
    with psycopg.connect(db) as conn, conn.cursor() as cur:
        assert len(read_all(cur, 0, 100_000)) == head


def test_sqlite_view_restores_its_state_and_position(tmp_path: Path) -> None:
    from tests.test_inventory_fold import rec

    view = SQLiteView(tmp_path / "v.sqlite", quantity_reducer)
    view.apply_batch([rec(1, "A", "set", 5), rec(2, "A", "add", -2)], 2)
    view.close()
    again = SQLiteView(tmp_path / "v.sqlite", quantity_reducer)
    state = again.get("inventory-A")
    assert again.position == 2 and state is not None and (state.state, state.version) == (3, 2)
    again.close()


def test_one_publisher_leads_and_a_republished_page_is_dropped_by_subscribers(
    settings: Settings, projector: Projector
) -> None:
    """A publisher that crashed after producing but before its checkpoint publishes the page again:
    subscribers recognise the repeats by position and apply nothing twice. A second publisher never
    publishes while the first one leads."""
    stream = stream_for("RP")
    with AgentClient("rp", settings) as c:
        assert all(h.result(30).ok for h in [c.emit(InventoryAdjusted(sku="RP", delta=1), stream) for _ in range(20)])
    view = LocalView(quantity_reducer)
    with Subscriber("republish", view=view, settings=settings, catch_up_from_db=False) as sub:
        view.wait_for_position(20, 30)
        standby = Publisher(settings).start()
        time.sleep(1.5)
        assert not standby.leading.is_set() and standby.published == 0  # the projector's publisher leads
        standby.stop()
        assert projector.publisher is not None
        projector.publisher.stop()
        with psycopg.connect(settings.require_database(), autocommit=True) as conn:
            conn.execute("UPDATE publisher_checkpoints SET position = 0")  # as if it died before saving
        again = Publisher(settings).start()
        try:
            wait_until(lambda: again.published == 20, 30, "the restarted publisher to republish")
            wait_until(lambda: sub.repeats_dropped == 20, 30, "the subscriber to drop the repeats")
        finally:
            again.stop()
        state = view.get(stream)
        assert state is not None and (state.state, state.version) == (20, 20)
        assert sub.applied == 20 and sub.backfilled == 0
    assert len(topic_messages(settings, settings.committed_topic, 40)) == 40
