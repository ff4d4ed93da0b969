"""Size limits at every hop and no silent skip (issue 8, items 2, 3 and the rebalance after a dropped
database connection), against the real servers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from eventstore import AgentClient, Outcome, Projector, RecordedEvent
from eventstore.core.errors import ConfigurationError, InvalidEventError, OffsetsNotTrustedError
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryUpdated, stream_for
from eventstore.kafka.config import ensure_topics, producer_config
from eventstore.postgres.intakebatch import IntakeMessage
from tests.app_events import DocumentTitled
from tests.fix_agents import signed
from tests.fix_projector import ProjectorProcess, scalar, settings_env, wait_until
from tests.test_hostile_parse import variant


def _admin(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.require_kafka()})


def _committed_values(settings: Settings, count: int, timeout: float = 30.0) -> list[bytes]:
    c = Consumer({"bootstrap.servers": settings.require_kafka(), "group.id": f"probe-{uuid.uuid4().hex[:6]}",
                  "fetch.wait.max.ms": 10, "allow.auto.create.topics": False})
    c.assign([TopicPartition(settings.committed_topic, 0, 0)])
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < count and time.monotonic() < deadline:
            m = c.poll(0.2)
            value = None if m is None or m.error() is not None else m.value()
            if value is not None:
                out.append(value)
    finally:
        c.close()
    return out


# -- size limits ------------------------------------------------------------------------------
def test_the_sdk_refuses_an_oversize_event_before_sending(settings: Settings) -> None:
    small = settings.replace(max_event_bytes=10_000)
    with AgentClient("big-writer", small) as client:
        with pytest.raises(InvalidEventError, match=r"bytes; the limit is 10,000 bytes \(EVENTSTORE_MAX_EVENT_BYTES\)"):
            client.emit(DocumentTitled(doc="d", title="x" * 20_000), "doc-big")
        client.flush()
    c = Consumer({"bootstrap.servers": settings.require_kafka(), "group.id": "probe"})
    try:
        highs = [c.get_watermark_offsets(TopicPartition(settings.intake_topic, p), timeout=10)[1]
                 for p in range(settings.intake_partitions)]
    finally:
        c.close()
    assert sum(highs) == 0, "nothing was sent"


def test_the_projector_dead_letters_an_oversize_message_and_carries_on(settings: Settings) -> None:
    small = settings.replace(max_event_bytes=10_000)
    db = settings.require_database()
    with Projector(small) as p:
        assert p.ready.wait(30)
        raw = Producer({"bootstrap.servers": settings.require_kafka()})
        big = variant().replace(b'"sku": "H1"', b'"sku": "' + b"H" * 20_000 + b'"')
        after = signed(db, variant())
        raw.produce(settings.intake_topic, value=big, key=b"inventory-H1")
        raw.produce(settings.intake_topic, value=after, key=b"inventory-H1")
        assert raw.flush(10) == 0
        wait_until(lambda: scalar(db, "SELECT count(*) FROM events WHERE event_id = %s",
                                  (json.loads(after)["event_id"],)) == 1, 60, "the event after the big one")
        reason = scalar(db, "SELECT reason FROM dead_letters")
        assert "EVENTSTORE_MAX_EVENT_BYTES" in reason and f"{len(big):,} bytes" in reason
        assert not p.finished.is_set()


def test_a_400_kb_non_ascii_event_commits_and_the_publisher_keeps_publishing(
    settings: Settings, projector: Projector
) -> None:
    title = "\U0001f600" * 100_000  # 400,000 bytes of UTF-8; json.dumps' \\u escapes made it 1.2 MB
    with AgentClient("emoji-writer", settings) as client:
        big = client.emit_and_wait(DocumentTitled(doc="big", title=title), "doc-emoji", timeout=60)
        after = client.emit_and_wait(InventoryUpdated(sku="AFTER", quantity=1), stream_for("AFTER"), timeout=30)
    assert big.status is Outcome.COMMITTED and after.status is Outcome.COMMITTED
    values = _committed_values(settings, 2, 60)
    assert len(values) == 2, "the event after the big one reached the committed topic"
    first = json.loads(values[0])
    assert first["position"] == big.position and first["payload"]["title"] == title
    assert len(values[0]) < 410_000 and "\U0001f600".encode() in values[0]
    assert json.loads(values[1])["position"] == after.position
    assert projector.publisher is not None and projector.publisher.stubs == 0


def test_an_event_too_large_for_the_committed_topic_reaches_subscribers_from_postgres(settings: Settings) -> None:
    from consumers.subscriber import Subscriber

    tight = settings.replace(max_committed_bytes=2000)
    seen: list[RecordedEvent] = []
    with Projector(tight) as p:
        assert p.ready.wait(30)
        sub = Subscriber("stub-reader", handlers={DocumentTitled: seen.append}, settings=tight,
                         catch_up_from_db=False).start()
        try:
            assert sub.live.wait(30)
            with AgentClient("stub-writer", tight) as client:
                r = client.emit_and_wait(DocumentTitled(doc="long", title="z" * 5000), "doc-long", timeout=30)
            assert r.status is Outcome.COMMITTED
            wait_until(lambda: len(seen) == 1, 30, "the subscriber to complete the stub from PostgreSQL")
        finally:
            sub.stop()
        assert seen[0].payload["title"] == "z" * 5000 and seen[0].position == r.position
        assert p.publisher is not None and p.publisher.stubs == 1
    stub = json.loads(_committed_values(settings, 1)[0])
    assert stub["payload_omitted"] is True and "payload" not in stub


# -- no silent skip ---------------------------------------------------------------------------
def _emit(settings: Settings, n: int, sku: str = "SKIP") -> None:
    with AgentClient("skipper", settings) as client:
        for i in range(n):
            client.emit(InventoryUpdated(sku=sku, quantity=i), stream_for(sku))
        client.flush()


def _reset(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eventstore.cli", "offsets", "reset", *args],
                          env=settings_env(settings), capture_output=True, text=True, timeout=60)


def _stops_with(settings: Settings, words: tuple[str, ...]) -> None:
    p = Projector(settings).start()
    try:
        assert p.finished.wait(60), "the projector must stop, not skip"
        assert isinstance(p.error, OffsetsNotTrustedError), p.error
        assert all(w in str(p.error) for w in words), str(p.error)
    finally:
        p.stop()


def test_a_recreated_intake_topic_stops_the_projector_until_an_operator_resets_it(settings: Settings) -> None:
    db = settings.require_database()
    with Projector(settings) as p:
        assert p.ready.wait(30)
        _emit(settings, 5)
        wait_until(lambda: scalar(db, "SELECT count(*) FROM events") == 5, 60, "5 events committed")
    admin = _admin(settings)
    for fut in admin.delete_topics([settings.intake_topic], operation_timeout=10).values():
        fut.result(15)
    wait_until(lambda: settings.intake_topic not in admin.list_topics(timeout=10).topics, 30, "topic deleted")
    ensure_topics(settings, {settings.intake_topic: settings.intake_partitions})
    _emit(settings, 1)  # lands at offset 0 of the recreated topic: below the stored offset 5
    _stops_with(settings, (settings.intake_topic, "stored offset 5", "end offset 1", "eventstore offsets reset"))
    assert scalar(db, "SELECT count(*) FROM events") == 5, "nothing applied, nothing skipped"

    done = _reset(settings, "--reason", "broker lost its data in the restart", "--by", "alice")
    assert done.returncode == 0, done.stderr
    assert "reset" in done.stdout and "alice" in done.stdout
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT agent_id, type, payload FROM events WHERE stream = 'ops-offsets'").fetchone()
    assert row is not None and row[0] == "operator:alice" and row[1] == "OffsetsReset"
    assert row[2]["reason"] == "broker lost its data in the restart" and 5 in row[2]["previous"].values()
    with Projector(settings) as p:
        wait_until(lambda: scalar(db, "SELECT count(*) FROM events WHERE stream LIKE 'inventory-%%'") == 6, 60,
                   "the event on the recreated topic to commit after the reset")
        assert not p.finished.is_set()


def test_a_truncated_intake_topic_stops_the_projector(settings: Settings) -> None:
    db = settings.require_database()
    with Projector(settings) as p:
        assert p.ready.wait(30)
        _emit(settings, 2)
        wait_until(lambda: scalar(db, "SELECT count(*) FROM events") == 2, 60, "2 events committed")
    _emit(settings, 3)  # offsets 2, 3, 4: never applied
    partition = int(scalar(db, "SELECT partition FROM consumer_offsets WHERE next_offset = 2"))
    admin = _admin(settings)
    try:
        for fut in admin.delete_records([TopicPartition(settings.intake_topic, partition, 4)]).values():
            fut.result(15)
    except KafkaException as e:
        pytest.skip(f"the broker does not support DeleteRecords (truncation cannot be simulated): {e}")
    _stops_with(settings, (f"{settings.intake_topic}[{partition}]", "stored offset 2", "start offset 4",
                           "deleted"))
    assert scalar(db, "SELECT count(*) FROM events") == 2
    assert _reset(settings, "--reason", "retention ate 2 events; re-sent by the agents").returncode == 0
    with Projector(settings):
        wait_until(lambda: scalar(db, "SELECT count(*) FROM events WHERE stream LIKE 'inventory-%%'") == 3, 60,
                   "the message left after the truncation to commit")


def test_a_topic_with_the_wrong_partition_count_is_an_error_at_start(settings: Settings) -> None:
    ensure_topics(settings, {settings.intake_topic: 2})
    with pytest.raises(ConfigurationError, match=r"has 2 partitions but 4 are configured"):
        Projector(settings).start()
    with pytest.raises(ConfigurationError, match=r"has 2 partitions but 4 are configured"):
        AgentClient("counter", settings)


def test_clients_never_create_topics_implicitly(settings: Settings) -> None:
    p = Producer(producer_config(settings))
    p.produce(settings.namespace + ".nowhere", value=b"x")
    p.flush(3)
    assert settings.namespace + ".nowhere" not in _admin(settings).list_topics(timeout=10).topics


# -- a rebalance after a dropped database connection -------------------------------------------
def test_a_rebalance_after_the_projectors_connection_was_killed(
    settings: Settings, spawn_projector: Callable[..., ProjectorProcess]
) -> None:
    db, per_round = settings.require_database(), 400
    a = spawn_projector(EVENTSTORE_BATCH_SIZE="50")
    wait_until(lambda: bool(a.assignments()), 60, "the first projector to own partitions")
    _emit(settings, per_round, sku="R1")
    wait_until(lambda: scalar(db, "SELECT count(*) FROM events") == per_round, 60, "the first round")
    killed = scalar(db, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = 'eventstore-projector' AND datname = current_database()")
    assert killed >= 1
    b = spawn_projector(EVENTSTORE_BATCH_SIZE="50")  # joins the group: a rebalance on a dead connection
    try:
        wait_until(lambda: bool(b.assignments()) and len(a.assignments()) >= 2, 90, "the rebalance")
    except pytest.fail.Exception:
        logs = "\n".join(a.lines[-30:] + b.lines[-30:])
        pytest.fail(f"no rebalance: a={a.assignments()} b={b.assignments()}\n{logs}")
    for sku in ("R2", "R3", "R4", "R5"):
        _emit(settings, per_round // 4, sku=sku)
    wait_until(lambda: scalar(db, "SELECT count(*) FROM events") == 2 * per_round, 90, "every event committed")
    time.sleep(0.5)
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(DISTINCT idempotency_key) = count(*) FROM events").fetchone() == (True,)
        assert conn.execute("SELECT max(position) = count(*) FROM events").fetchone() == (True,)
        assert conn.execute("SELECT count(*) FROM dead_letters").fetchone() == (0,)
    assert a.proc.poll() is None and b.proc.poll() is None, "both projectors keep running"


def test_the_batch_transaction_refuses_a_gap_and_a_start_beyond_the_stored_offset(settings: Settings) -> None:
    """What truncation looks like to the projector, checked under the offsets row lock; tansu has no
    DeleteRecords, so the broker side is simulated here by the messages and watermarks handed in."""
    from eventstore.core.events import registry
    from eventstore.postgres.intake import write_batch
    from eventstore.postgres.intakebatch import IntakeMessage

    db = settings.require_database()
    first = IntakeMessage(0, 0, b"inventory-H1", signed(db, variant()))
    with psycopg.connect(db) as conn:
        write_batch(conn, group="g", topic="t", messages=[first], models=[], types=registry)
        gap = [IntakeMessage(0, 3, b"inventory-H1", variant())]  # offsets 1 and 2 never arrived
        cut = write_batch(conn, group="g", topic="t", messages=gap, models=[], types=registry)
        assert cut.rewind == {0: 1} and not cut.committed and not cut.next_offsets, "nothing applied past a hole"
        with pytest.raises(OffsetsNotTrustedError, match=r"stored offset 1 of t\[0\] is before the topic's start "
                                                         r"offset 3"):
            write_batch(conn, group="g", topic="t", messages=gap, models=[], types=registry, watermarks={0: (3, 4)})
        with pytest.raises(OffsetsNotTrustedError, match=r"beyond the topic's end offset 0"):
            write_batch(conn, group="g", topic="t", messages=[IntakeMessage(0, 0, None, None)], models=[],
                        types=registry, watermarks={0: (0, 0)})
    assert scalar(db, "SELECT next_offset FROM consumer_offsets WHERE group_id = 'g'") == 1
    assert scalar(db, "SELECT count(*) FROM events") == 1


class _SkippingProjector(Projector):
    """A consumer that steps past offset 2 (once, or ``always``), as a broker that shows a record before
    an earlier one of a concurrent producer makes it do (seen in CI under load with the embedded broker)."""

    skipped = 0
    always = False

    def _next_batch(self, consumer: Consumer) -> list[IntakeMessage]:
        batch = super()._next_batch(consumer)
        if (self.always or not self.skipped) and any(m.offset == 2 for m in batch):
            self.skipped += 1
            return [m for m in batch if m.offset != 2]
        return batch


def test_a_consumer_that_steps_past_a_record_is_rewound_and_nothing_is_skipped(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    db = settings.require_database()
    _emit(settings, 6)  # one stream, one partition: offsets 0..5
    with _SkippingProjector(settings) as p:
        wait_until(lambda: scalar(db, "SELECT count(*) FROM events WHERE stream LIKE 'inventory-%%'") == 6, 60,
                   "all six events, the skipped one included, to commit")
        assert p.skipped == 1 and p.error is None and not p.finished.is_set()
    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT payload->>'quantity' FROM events WHERE stream LIKE 'inventory-%%' "
                            "ORDER BY position").fetchall()
        assert conn.execute("SELECT max(next_offset) FROM consumer_offsets").fetchone() == (6,)
    assert [r[0] for r in rows] == ["0", "1", "2", "3", "4", "5"], "applied once each, in the topic's order"
    assert any("rewinding to 2" in r.getMessage() for r in caplog.records), "the rewind is logged"


def test_a_record_that_never_comes_stops_the_projector_after_the_rewinds(settings: Settings) -> None:
    db = settings.require_database()
    _emit(settings, 6)
    p = _SkippingProjector(settings)
    p.always = True
    p.hole_patience = 2.0  # 30 s by default
    p.start()
    try:
        assert p.finished.wait(60), "the projector must stop, not skip offset 2"
        assert isinstance(p.error, OffsetsNotTrustedError), p.error
        assert "offset 2 was not delivered for 2 s" in str(p.error), str(p.error)
        assert "eventstore offsets reset" in str(p.error)
        assert p.skipped >= 3, "it rewound and looked again before giving up"
    finally:
        p.stop()
    assert scalar(db, "SELECT count(*) FROM events WHERE stream LIKE 'inventory-%%'") == 2, "offsets 0 and 1 only"
    assert scalar(db, "SELECT max(next_offset) FROM consumer_offsets") == 2


def test_the_publisher_sends_a_stub_when_the_client_refuses_a_message_as_too_large(settings: Settings) -> None:
    """A broker or client limit below EVENTSTORE_MAX_COMMITTED_BYTES: librdkafka refuses the message
    (MSG_SIZE_TOO_LARGE); the publisher sends the stub instead and carries on with the next event."""
    from eventstore.core.records import DirectEvent
    from eventstore.postgres import eventlog
    from eventstore.projection.publisher import Publisher

    db = settings.require_database()
    with psycopg.connect(db) as conn, conn.transaction(), conn.cursor() as cur:
        eventlog.append_direct(cur, [DirectEvent("doc-a", DocumentTitled(doc="a", title="w" * 30_000), "t"),
                                     DirectEvent("doc-b", DocumentTitled(doc="b", title="small"), "t")])
    tight = settings.replace(kafka_config={"message.max.bytes": 10_000})
    with Publisher(tight) as pub:
        wait_until(lambda: pub.published == 2, 30, "both events published")
        assert pub.stubs == 1 and not pub.finished.is_set()
        # The refused position is remembered only until the checkpoint passes it (no per-event memory).
        wait_until(lambda: pub.saved == 2, 30, "the checkpoint stored past both events")
        wait_until(lambda: not pub._too_large, 5, "the refused position forgotten after the checkpoint")
    first, second = (json.loads(v) for v in _committed_values(settings, 2))
    assert first["payload_omitted"] is True and first["position"] == 1
    assert second["payload"] == {"doc": "b", "title": "small"}
