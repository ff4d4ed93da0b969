"""The subscriber's commit wake-up on real servers: a woken subscriber follows the log without the
publisher, a forged or garbage NOTIFY applies nothing uncommitted and costs bounded reads, a dropped LISTEN
connection heals, and Kafka racing the wake-ups leaves no gap and no duplicate (promises 3, 4, 9)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from consumers import LocalView, Subscriber
from consumers.checkpoints import MemoryCheckpoint
from eventstore import AgentClient, Projector
from eventstore.core.records import DirectEvent, RecordedEvent
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryAdjusted, InventoryUpdated, quantity_reducer, stream_for
from eventstore.postgres.eventlog import append_direct
from eventstore.wire.notifications import COMMITTED_CHANNEL
from tests.fix_projector import scalar, wait_until
from tests.test_subscribers import read_model

NEVER = 3600.0  # idle_check: the log is never read because Kafka was idle, only on a wake-up


def commit(db: str, sku: str, quantity: int = 1) -> int:
    """Append one event and notify its position in the same transaction, as the projector does."""
    with psycopg.connect(db) as conn, conn.cursor() as cur:
        (ev,) = append_direct(cur, [DirectEvent(stream_for(sku), InventoryUpdated(sku=sku, quantity=quantity), "seed")])
        cur.execute("SELECT pg_notify(%s, %s)", (COMMITTED_CHANNEL, str(ev.position)))
    return ev.position


def notify(db: str, *payloads: str) -> None:
    """Forged notices: any role may NOTIFY the committed channel."""
    with psycopg.connect(db, autocommit=True) as conn:
        for p in payloads:
            conn.execute("SELECT pg_notify(%s, %s)", (COMMITTED_CHANNEL, p))


@pytest.fixture
def woken(settings: Settings) -> Iterator[tuple[Subscriber, LocalView, list[int]]]:
    """A woken subscriber that never checks the log on its own and has no publisher to follow."""
    view = LocalView(quantity_reducer)
    seen: list[int] = []

    def note(ev: RecordedEvent) -> None:
        seen.append(ev.position)

    sub = Subscriber("woken", handlers={InventoryUpdated: note, InventoryAdjusted: note}, view=view,
                     settings=settings, idle_check=NEVER, wake_on_commit=True, checkpoint=MemoryCheckpoint(0))
    sub.start()
    wait_until(lambda: sub._listens > 0 or sub.error is not None, 30, "the subscriber to LISTEN")
    yield sub, view, seen
    sub.stop()
    assert sub.error is None


def test_a_woken_subscriber_follows_the_log_without_any_publisher(settings: Settings) -> None:
    """The projector runs without its publisher: nothing reaches the committed topic, yet the woken view
    follows each commit within a second; a subscriber that is not woken does not."""
    view, plain_view = LocalView(quantity_reducer), LocalView(quantity_reducer)
    with Projector(settings, publish=False) as p, AgentClient("waker", settings) as c, \
            Subscriber("woken", view=view, settings=settings, idle_check=NEVER, wake_on_commit=True) as sub, \
            Subscriber("plain", view=plain_view, settings=settings, idle_check=NEVER) as plain:
        assert p.ready.wait(30)
        wait_until(lambda: sub._listens > 0, 30, "the subscriber to LISTEN")
        for i in range(5):
            r = c.emit_and_wait(InventoryAdjusted(sku="W", delta=i + 1), stream_for("W"), timeout=30)
            assert r.ok and r.position is not None
            view.wait_for_position(r.position, 1.0)
        assert view.get(stream_for("W")).state == 15  # type: ignore[union-attr]
        assert sub.woken >= 5 and sub.wake_reads >= 1 and sub.gate.disproved == 0
        assert plain_view.position == 0 and plain.applied == 0  # no publisher, no idle check: nothing
    assert sub.error is None and plain.error is None


def test_a_woken_subscriber_follows_commits_while_the_committed_topic_does_not_exist(
        settings: Settings, woken: tuple[Subscriber, LocalView, list[int]]) -> None:
    """No projector and no topics yet: the subscriber waits for the committed topic, and meanwhile the
    notices still bring each commit within a second (the idle check is off)."""
    sub, view, seen = woken
    db = settings.require_database()
    for sku in ("T1", "T2"):
        position = commit(db, sku)
        view.wait_for_position(position, 1.0)
    assert not sub.live.is_set() and seen == [1, 2] and sub.woken == 2


def test_forged_notices_apply_nothing_uncommitted_and_cost_bounded_reads(
        settings: Settings, woken: tuple[Subscriber, LocalView, list[int]]) -> None:
    sub, view, seen = woken
    db = settings.require_database()
    head = 0
    for i in range(3):
        head = commit(db, f"F{i}")
    view.wait_for_position(head, 5)
    assert sub.checkpoint is not None and sub.checkpoint.load() == head

    # An event appended but not committed (its transaction holds the log head), and notices claiming it.
    pending = psycopg.connect(db)
    try:
        with pending.cursor() as cur:
            (uncommitted,) = append_direct(cur, [DirectEvent(stream_for("X"), InventoryUpdated(sku="X", quantity=9),
                                                             "forger")])
        assert uncommitted.position == head + 1
        queries = sub.queries
        notify(db, str(head + 1), str(10**12), "garbage", "-5", "", "9" * 7000, "1e9", "\x01")
        notify(db, *[str(head + 1 + i) for i in range(500)])  # a storm
        time.sleep(1.0)
        assert (sub.last, view.position, sub.checkpoint.load()) == (head, head, head)
        assert seen == list(range(1, head + 1)) and view.get(stream_for("X")) is None
        assert sub.gate.disproved >= 1
        # 501 claims within the window: reads pause for 0.1 s after each disproved one, so a storm costs
        # a few reads per second, not one per notice (without the pause: ~150 reads in this second).
        assert sub.queries - queries <= 15, sub.queries - queries
    finally:
        pending.rollback()
        pending.close()
    assert scalar(db, "SELECT position FROM log_head") == head

    time.sleep(0.2)  # past the pause
    after = commit(db, "G")
    view.wait_for_position(after, 1.0)
    assert seen == list(range(1, after + 1))
    assert sub.forgeries == 0 and sub.error is None


def test_a_dropped_listen_connection_heals(settings: Settings,
                                          woken: tuple[Subscriber, LocalView, list[int]]) -> None:
    sub, view, seen = woken
    db = settings.require_database()
    first = commit(db, "D1")
    view.wait_for_position(first, 5)

    def wake_pids() -> list[int]:
        with psycopg.connect(db, autocommit=True) as conn:
            return [int(r[0]) for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'eventstore-wake:woken'")]

    (old,) = wake_pids()
    assert scalar(db, "SELECT pg_terminate_backend(%s)", (old,)) is True
    # Committed while nobody listens: the notice is lost; the re-LISTEN reads the log once.
    missed = commit(db, "D2")
    wait_until(lambda: wake_pids() not in ([], [old]), 30, "a new LISTEN connection")
    view.wait_for_position(missed, 5.0)
    later = commit(db, "D3")
    view.wait_for_position(later, 1.0)
    assert sub._listens >= 2 and seen == list(range(1, later + 1)) and sub.error is None


def test_kafka_and_wakeups_racing_leave_no_gap_and_no_duplicate(settings: Settings, projector: Projector) -> None:
    """Four agents emit concurrently; the publisher runs, so every event reaches the subscriber twice (the
    log on the notice, Kafka after): each position is applied exactly once, in order, and the view is the
    read model."""
    db = settings.require_database()
    seen: list[int] = []
    view = LocalView(quantity_reducer)

    def note(ev: RecordedEvent) -> None:
        seen.append(ev.position)

    def agent(n: int) -> None:
        with AgentClient(f"racer-{n}", settings) as c:
            hs = [c.emit(InventoryAdjusted(sku=f"R{i % 7}", delta=1), stream_for(f"R{i % 7}")) for i in range(150)]
            assert all(h.result(60).ok for h in hs)

    with Subscriber("racer", handlers={InventoryAdjusted: note}, view=view, settings=settings,
                    wake_on_commit=True) as sub:
        wait_until(lambda: sub.live.is_set(), 30, "the subscriber to follow the committed topic")
        threads = [threading.Thread(target=agent, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        head = scalar(db, "SELECT position FROM log_head")
        assert head == 600
        view.wait_for_position(head, 30)
        # Kafka's copy of each position is either applied (it came first) or dropped as a repeat.
        wait_until(lambda: sub.applied - sub.backfilled + sub.repeats_dropped >= head, 30, "Kafka's copies")
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 2.0  # stop() is prompt
    assert seen == list(range(1, head + 1))  # no gap, no duplicate, in order
    assert {s: st.state for s, st in view.streams().items()} == read_model(db)
    assert sub.woken > 0 and sub.repeats_dropped > 0, (sub.woken, sub.repeats_dropped)
    assert sub.forgeries == 0 and sub.error is None
    assert sub.gate.disproved == 0  # a genuine notice is never ahead of what a read after it sees


def test_the_setting_turns_the_wake_up_on(settings: Settings) -> None:
    on = Subscriber("s1", settings=settings.replace(subscriber_wake_on_commit=True))
    off = Subscriber("s2", settings=settings)
    forced = Subscriber("s3", settings=settings.replace(subscriber_wake_on_commit=True), wake_on_commit=False)
    assert (on.wake_on_commit, off.wake_on_commit, forced.wake_on_commit) == (True, False, False)
