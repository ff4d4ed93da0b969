"""The publisher fed from the batch just committed (issue 11, plan item 5): what it publishes from memory
is exactly what the log holds, in position order with no hole and no repeat, with several projectors,
after a crash, after a lost connection, with oversized-payload stubs, and a hand-off that does not chain
onto the published log is not trusted."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from eventstore import AgentClient, Projector
from eventstore.core.errors import BrokerError
from eventstore.core.hashing import GENESIS, canonical_json, intent_hash, recorded_hash
from eventstore.core.records import DirectEvent, NewEvent, RecordedEvent
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryAdjusted, InventoryUpdated, stream_for
from eventstore.postgres import eventlog
from eventstore.postgres.logreader import read_committed_rows
from eventstore.projection.handoff import LocalCommits, contiguous_runs
from eventstore.projection.publisher import Publisher
from eventstore.wire.committed import PayloadOmitted, decode_committed, encode_recorded, encode_row
from tests.app_events import DocumentTitled
from tests.fix_projector import ProjectorProcess, scalar, wait_until
from tests.test_subscribers import topic_messages


def ev(position: int, prev: bytes | None = None, h: bytes | None = None) -> RecordedEvent:
    eid = uuid.uuid4()
    return RecordedEvent(position=position, event_id=eid, stream="s", version=position, type="T", schema_version=1,
                         payload={"n": position}, agent_id="a", idempotency_key=f"k{position}", correlation_id=eid,
                         causation_id=None, occurred_at=None, recorded_at=datetime.now(UTC), prev_hash=prev, hash=h)


def evs(first: int, last: int) -> list[RecordedEvent]:
    return [ev(p) for p in range(first, last + 1)]


def positions(events: list[RecordedEvent]) -> list[int]:
    return [e.position for e in events]


# -- the hand-off buffer, without servers -----------------------------------------------------------
def test_handoff_answers_only_from_the_next_position_and_bounds_the_log_read() -> None:
    local = LocalCommits(limit=100)
    local.enable(True)
    with local.batch() as hand:
        hand(evs(11, 20) + evs(31, 40))  # a split batch: another process committed 21..30 in between
    assert [positions(r) for r in contiguous_runs(evs(1, 3) + evs(5, 5))] == [[1, 2, 3], [5]]
    assert local.take(5, 100, 0) == ([], 11)  # 6..10 are not held: read them from the log, up to 11
    got, before = local.take(12, 3, 0)  # 11 and 12 were published (e.g. from the log by a previous leader)
    assert positions(got) == [13, 14, 15] and before is None
    got, _ = local.take(15, 100, 0)
    assert positions(got) == list(range(16, 21))  # a run ends where the positions stop following
    assert local.take(20, 100, 0) == ([], 31)
    assert positions(local.take(30, 100, 0)[0]) == list(range(31, 41)) and local.held == 0


def test_handoff_is_bounded_and_kept_only_while_enabled() -> None:
    local = LocalCommits(limit=25)
    with local.batch() as hand:
        hand(evs(1, 10))
    assert local.held == 0 and local.take(0, 100, 0) == ([], None)  # standby: nothing kept
    local.enable(True)
    for first in (1, 11, 21):
        with local.batch() as hand:
            hand(evs(first, first + 9))
    assert local.held == 20 and local.dropped == 10  # the oldest run went: the log has it
    assert local.take(0, 100, 0) == ([], 11)
    local.enable(False)
    assert local.held == 0


def test_take_waits_for_the_batch_in_flight_but_not_for_later_ones() -> None:
    local = LocalCommits()
    local.enable(True)
    go = [threading.Event() for _ in range(2)]
    inside = [threading.Event() for _ in range(2)]

    def projector() -> None:
        with local.batch() as hand:  # commits 1..5
            inside[0].set()
            go[0].wait(10)
            hand(evs(1, 5))
        with local.batch():  # commits nothing the publisher wants ...
            inside[1].set()
            go[1].wait(10)
        with local.batch():  # ... and the next batch starts at once and takes long
            time.sleep(4)

    t = threading.Thread(target=projector, daemon=True)
    t.start()
    assert inside[0].wait(10)
    threading.Timer(0.2, go[0].set).start()
    started = time.monotonic()
    got, _ = local.take(0, 100, 10)  # woken at COMMIT, before the projector handed the batch over
    assert positions(got) == [1, 2, 3, 4, 5] and time.monotonic() - started < 3
    assert inside[1].wait(10)
    threading.Timer(0.2, go[1].set).start()
    started = time.monotonic()
    assert local.take(5, 100, 10) == ([], None)  # position 6 did not come with the batch in flight
    assert time.monotonic() - started < 3, "take waited for a batch that started after it was called"
    t.join(10)


def test_the_benchmarks_baseline_encoder_is_the_previous_format() -> None:
    """``bench publisher`` measures the previous encoder as its baseline: it must give the same message."""
    from eventstore.bench.publishing import legacy_encode

    e = ev(9, GENESIS, b"\x01" * 32)
    old_key, old_value, old_headers = legacy_encode(e, 10_000)
    _, key, value, headers, stub = encode_recorded(e)
    assert (old_key, old_headers, stub) == (key, headers, False)
    assert decode_committed(old_value) == decode_committed(value) == e


# -- the two encodings give the log's events, and the subscriber's hash check passes ---------------------
def _append_varied(cur: psycopg.Cursor[Any]) -> list[RecordedEvent]:
    """Events with every optional field, odd strings, non-UTC agent clocks and numbers jsonb rewrites."""
    payloads: list[dict[str, Any]] = [
        {"text": 'quote " backslash \\ tab\t emoji \U0001f600 \u2028', "nested": {"list": [1, 2.5, None, True]}},
        {"big": 1e16, "negzero": -0.0, "small": 1e-7, "huge": 10**30},
        {},
    ]
    new = []
    for i, payload in enumerate(payloads):
        text = canonical_json(payload)
        eid = uuid.uuid4()
        stream = f'odd "stream" \\ {i} é'
        new.append(NewEvent(
            event_id=eid, stream=stream, version=1, type="Odd", schema_version=2, payload_json=text, payload=payload,
            agent_id='agent "x"', idempotency_key=f"key\\{i}", correlation_id=eid if i else uuid.uuid4(),
            causation_id=uuid.uuid4() if i == 0 else None,
            occurred_at=datetime(2026, 5, 1, 12, 0, 0, 123 if i else 0, tzinfo=timezone(timedelta(hours=2))) if i < 2
            else None,
            lease_resource="res \"q\"" if i == 1 else None, fencing_token=7 if i == 1 else None,
            intent=intent_hash("Odd", 2, stream, text)))
    return eventlog.append(cur, new)


def test_a_message_from_memory_equals_the_message_from_the_log_and_the_log(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        with conn.cursor() as cur:
            held = _append_varied(cur)
        conn.commit()
        with conn.cursor() as cur:
            rows = read_committed_rows(cur, 0, None, 100)
            logged = eventlog.read_all(cur, 0, 100)
    assert len(held) == len(rows) == len(logged) == 3
    prev = GENESIS
    for mine, row, truth in zip(held, rows, logged, strict=True):
        from_memory, from_log = decode_committed(encode_recorded(mine)[2]), decode_committed(encode_row(row)[2])
        assert from_memory == from_log == truth
        assert json.dumps(from_memory.payload, sort_keys=True) == json.dumps(truth.payload, sort_keys=True)
        assert encode_recorded(mine)[1] == encode_row(row)[1] == truth.stream.encode()
        assert encode_recorded(mine)[3] == encode_row(row)[3]
        assert recorded_hash(from_memory, prev) == truth.hash  # what a subscriber checks
        prev = truth.hash or GENESIS
    assert scalar(database_url, "SELECT count(*) FROM events") == 3


def test_stubs_are_the_same_from_memory_and_from_the_log(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        with conn.cursor() as cur:
            (held,) = eventlog.append_direct(cur, [DirectEvent("doc-x", DocumentTitled(doc="x", title="t" * 3000),
                                                               "a")])
        conn.commit()
        with conn.cursor() as cur:
            (row,) = read_committed_rows(cur, 0, None, 10)
    for encoded in (encode_recorded(held, 2000), encode_row(row, 2000)):
        assert encoded[4] is True and len(encoded[2]) < 400
        with pytest.raises(PayloadOmitted) as caught:
            decode_committed(encoded[2])
        assert caught.value.position == 1


# -- the promises on real servers ---------------------------------------------------------------------
def every_message(settings: Settings, topic: str) -> list[bytes]:
    """Every message on partition 0 up to its high watermark now, repeats included (reading a count of
    messages would stop short of the newest positions when republished pages add repeats)."""
    _, kafka = settings.require_servers()
    c = Consumer({"bootstrap.servers": kafka, "group.id": "watermark-reader"})
    try:
        low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        c.close()
    assert low == 0, "nothing is deleted from the committed topic in these tests"
    return topic_messages(settings, topic, high, timeout=60)


def check_topic(settings: Settings, total: int, *, repeats_allowed: bool = False) -> list[RecordedEvent]:
    """The committed topic against the log: positions 1..total in order, each message the log's event and
    chained onto the one before (a republished page, after a crash, is dropped as a subscriber does)."""
    values = every_message(settings, settings.committed_topic)
    seen: list[RecordedEvent] = []
    repeats = 0
    for value in values:
        got = decode_committed(value)
        if seen and got.position <= seen[-1].position:
            repeats += 1
            continue
        seen.append(got)
    with psycopg.connect(settings.require_database()) as conn, conn.cursor() as cur:
        logged = eventlog.read_all(cur, 0, total + 10)
    assert len(logged) == total
    assert positions(seen) == list(range(1, total + 1)), "a hole or a reordering on the committed topic"
    assert seen == logged
    prev = GENESIS
    for e in seen:
        assert e.prev_hash == prev and recorded_hash(e, prev) == e.hash
        prev = e.hash or GENESIS
    assert repeats == 0 or repeats_allowed, f"{repeats} events published twice without a crash"
    return seen


def emit(settings: Settings, n: int, agent: str, skus: int = 20) -> None:
    with AgentClient(agent, settings) as c:
        handles = [c.emit(InventoryAdjusted(sku=f"H{i % skus}", delta=1), stream_for(f"H{i % skus}"))
                   for i in range(n)]
        assert all(h.result(60).ok for h in handles)


def test_two_projectors_publish_every_position_once_from_memory_and_from_the_log(settings: Settings) -> None:
    """The leading publisher takes its own projector's batches from memory and the other projector's
    from the log; the topic still carries 1..N once each, in order."""
    s = settings.replace(batch_size=50)
    with Projector(s) as a, Projector(s) as b:
        assert a.ready.wait(30) and b.ready.wait(30)
        wait_until(lambda: bool(a._assigned) and bool(b._assigned), 60, "both projectors to own partitions")
        emit(s, 600, "two-projectors", skus=40)
        total = scalar(s.require_database(), "SELECT position FROM log_head")
        check_topic(s, total)
        leader = a.publisher if a.publisher is not None and a.publisher.leading.is_set() else b.publisher
        other = b if leader is a.publisher else a
        assert leader is not None and leader.leading.is_set() and leader.chain_misses == 0
        assert other.stats.committed > 0, "the other projector committed nothing: the test proves nothing"
        wait_until(lambda: leader.published >= total, 30, "the leader to count what it published")
        assert leader.from_memory > 0 and leader.from_log > 0 and leader.published == total


def test_a_lost_publisher_connection_and_a_crashed_projector_leave_no_hole(
    settings: Settings, spawn_projector: Callable[..., ProjectorProcess]
) -> None:
    db = settings.require_database()
    with Projector(settings) as p:
        assert p.ready.wait(30) and p.publisher is not None
        emit(settings, 200, "before")
        wait_until(lambda: p.publisher is not None and p.publisher.published == 200, 30, "200 published")
        from_memory = p.publisher.from_memory
        assert from_memory > 0
        with psycopg.connect(db, autocommit=True) as conn:  # the publisher loses PostgreSQL
            killed = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                  "WHERE application_name = 'eventstore-publisher' AND datname = current_database()"
                                  ).fetchone()
        assert killed == (1,)
        wait_until(lambda: p.publisher is not None and p.publisher.leads == 2, 30, "the publisher to lead again")
        emit(settings, 200, "after-lost-connection")
        wait_until(lambda: p.publisher is not None and p.publisher.published >= 400, 60, "400 published")
        assert p.publisher.from_memory > from_memory, "the hand-off did not resume after the reconnect"
    # A projector process killed mid-stream: its successor publishes the rest from the log and from memory.
    first = spawn_projector(EVENTSTORE_BATCH_SIZE="50")
    with AgentClient("crash", settings) as c:
        for i in range(5000):
            c.emit(InventoryUpdated(sku=f"C{i % 30}", quantity=i), stream_for(f"C{i % 30}"))
        c.flush(60)
        wait_until(lambda: (scalar(db, "SELECT position FROM log_head") or 0) > 600, 60, "some batches")
        first.kill()
        assert (scalar(db, "SELECT position FROM log_head") or 0) < 5400, "the kill must land mid-stream"
        spawn_projector(EVENTSTORE_BATCH_SIZE="50")
        wait_until(lambda: scalar(db, "SELECT position FROM log_head") == 5400, 120, "everything committed")
    wait_until(lambda: scalar(db, "SELECT position FROM publisher_checkpoints") == 5400, 60, "all published")
    check_topic(settings, 5400, repeats_allowed=True)


def test_a_hand_off_that_does_not_chain_onto_the_log_is_never_published(settings: Settings) -> None:
    """Memory can save a read but not change what is published: a run at the right positions that does
    not chain onto the last published hash is dropped, and the log's own events go out instead."""
    db = settings.require_database()
    with Publisher(settings) as pub:
        wait_until(lambda: pub.leads == 1, 30, "the publisher to lead and take hand-offs")
        forged = [ev(1, GENESIS[:31] + b"\x01", b"\x02" * 32), ev(2, b"\x02" * 32, b"\x03" * 32)]
        with pub.local.batch() as hand:
            hand(forged)
        with psycopg.connect(db) as conn, conn.cursor() as cur:
            eventlog.append_direct(cur, [DirectEvent(stream_for("R"), InventoryUpdated(sku="R", quantity=q), "a")
                                         for q in (1, 2)])
        wait_until(lambda: pub.published == 2, 30, "the log's two events published")
        assert pub.chain_misses == 1 and pub.from_memory == 0 and pub.from_log == 2
    seen = check_topic(settings, 2)
    assert [e.payload["quantity"] for e in seen] == [1, 2]


def test_an_oversized_event_goes_out_as_a_stub_from_memory(settings: Settings) -> None:
    tight = settings.replace(max_committed_bytes=2000)
    with Projector(tight) as p, AgentClient("stubs", tight) as c:
        assert p.ready.wait(30) and p.publisher is not None
        wait_until(lambda: p.publisher is not None and p.publisher.leads == 1, 30, "the publisher to lead")
        assert c.emit_and_wait(InventoryUpdated(sku="S", quantity=1), stream_for("S"), timeout=30).ok
        wait_until(lambda: p.publisher is not None and p.publisher.published == 1, 30, "the first published")
        big = c.emit_and_wait(DocumentTitled(doc="big", title="b" * 5000), "doc-big", timeout=30)
        after = c.emit_and_wait(InventoryUpdated(sku="S", quantity=2), stream_for("S"), timeout=30)
        assert big.ok and after.ok
        wait_until(lambda: p.publisher is not None and p.publisher.published == 3, 30, "all three published")
        assert p.publisher.stubs == 1 and p.publisher.from_memory >= 2
    values = topic_messages(tight, tight.committed_topic, 3)
    with pytest.raises(PayloadOmitted):
        decode_committed(values[1])
    assert [decode_committed(v).payload["quantity"] for v in (values[0], values[2])] == [1, 2]


def test_the_checkpoint_never_claims_what_the_topic_lacks_across_sigkills(
    settings: Settings, spawn_projector: Callable[..., ProjectorProcess]
) -> None:
    """The publisher pipelines pages and stores its checkpoint only now and then, for positions the broker
    acknowledged. A projector process SIGKILLed twice mid-stream: at each kill every position up to the
    stored checkpoint is on the topic (a checkpoint ahead of the topic would be a hole after the restart),
    and the final topic, repeats dropped as subscribers drop them, is exactly the log."""
    db = settings.require_database()
    total = 4000
    proc = spawn_projector(EVENTSTORE_BATCH_SIZE="40")
    with AgentClient("sigkill", settings) as c:
        for i in range(total):
            c.emit(InventoryUpdated(sku=f"K{i % 25}", quantity=i), stream_for(f"K{i % 25}"))
        c.flush(60)
        for kill_after in (500, 2000):
            def past(n: int = kill_after) -> bool:
                return (scalar(db, "SELECT position FROM publisher_checkpoints") or 0) > n

            wait_until(past, 120, f"the checkpoint past {kill_after}")
            proc.kill()
            checkpoint = scalar(db, "SELECT position FROM publisher_checkpoints") or 0
            head = scalar(db, "SELECT position FROM log_head") or 0
            assert checkpoint < total, "the kill must land mid-stream"
            on_topic = {decode_committed(v).position
                        for v in every_message(settings, settings.committed_topic)}
            missing = [p for p in range(1, checkpoint + 1) if p not in on_topic]
            assert not missing, f"checkpoint {checkpoint} claims positions the topic lacks: {missing[:5]}"
            assert max(on_topic) <= head
            proc = spawn_projector(EVENTSTORE_BATCH_SIZE="40")
        wait_until(lambda: scalar(db, "SELECT position FROM log_head") == total, 120, "everything committed")
    wait_until(lambda: scalar(db, "SELECT position FROM publisher_checkpoints") == total, 60, "all published")
    check_topic(settings, total, repeats_allowed=True)


class _Queue:
    """What ``Publisher._settle`` asks of a producer: messages outstanding, served by poll, waited by flush."""

    def __init__(self, outstanding: int, after_flush: int = 0) -> None:
        self.outstanding, self.after_flush, self.flushes = outstanding, after_flush, 0

    def poll(self, timeout: float) -> int:
        return 0

    def __len__(self) -> int:
        return self.outstanding

    def flush(self, timeout: float) -> int:
        self.flushes += 1
        self.outstanding = self.after_flush
        return self.outstanding


class _Conn:
    def __init__(self) -> None:
        self.saved: list[int] = []

    def execute(self, query: str, params: tuple[str, int]) -> None:
        self.saved.append(params[1])


def test_the_checkpoint_moves_only_over_acknowledged_positions_and_not_every_page(settings: Settings) -> None:
    """The decision alone (no servers): nothing outstanding is stored only when due; while messages are
    outstanding it waits for them once when due, and stores nothing if they are still not acknowledged."""
    pub = Publisher(settings, checkpoint_every=3600)
    conn = _Conn()
    pub.position, pub.acked, pub.saved, pub._saved_at = 100, 50, 50, time.monotonic()
    pub._settle(conn, _Queue(0))  # type: ignore[arg-type]
    assert pub.acked == 100 and conn.saved == [], "stored before it was due"
    pub.position = 150
    queue = _Queue(3)
    pub._settle(conn, queue)  # type: ignore[arg-type]
    assert pub.acked == 100 and queue.flushes == 0
    stuck = _Queue(3, after_flush=1)
    pub._settle(conn, stuck, final=True)  # type: ignore[arg-type]
    assert stuck.flushes == 1 and conn.saved == [100], "stored a position the broker had not acknowledged"
    pub._settle(conn, _Queue(2, after_flush=0), final=True)  # type: ignore[arg-type]
    assert conn.saved == [100, 150] and pub.saved == 150
    pub.position = 160
    pub._failures = ["broker said no"]
    with pytest.raises(BrokerError):
        pub._settle(conn, _Queue(0), final=True)  # type: ignore[arg-type]
    assert conn.saved == [100, 150], "stored a checkpoint over a failed delivery"
    every_page = Publisher(settings, pipeline=False, checkpoint_every=0)
    every_page.position, every_page._saved_at = 10, time.monotonic()
    every_page._settle(conn, _Queue(0))  # type: ignore[arg-type]
    assert conn.saved[-1] == 10
