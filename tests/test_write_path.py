"""The write path against real PostgreSQL and a real Kafka-API broker: promises 1, 2, 5 and 8."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from eventstore import AgentClient, AsyncAgentClient, Outcome, Projector, ReadModel, RecordedEvent
from eventstore.core.auth import sign
from eventstore.core.errors import AppendOnlyViolation, InvalidEventError
from eventstore.core.outcomes import ReasonCode
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryAdjusted, InventoryUpdated, stream_for
from eventstore.postgres.connection import convert
from eventstore.postgres.eventlog import verify_chain
from eventstore.sdk.client import build_envelope
from eventstore.wire.envelope import encode
from tests.fix_projector import ProjectorProcess, scalar, wait_until


def intake_size(settings: Settings) -> int:
    """Messages on the intake topic, summed over its partitions."""
    _, kafka = settings.require_servers()
    c = Consumer({"bootstrap.servers": kafka, "group.id": "probe"})
    try:
        total = 0
        for p in range(settings.intake_partitions):
            low, high = c.get_watermark_offsets(TopicPartition(settings.intake_topic, p), timeout=10)
            total += high - low
        return total
    finally:
        c.close()


def test_emit_commit_and_read_back(settings: Settings, projector: Projector) -> None:
    with AgentClient("order-agent", settings) as client:
        r1 = client.emit_and_wait(InventoryUpdated(sku="A1", quantity=5), stream_for("A1"), expected_version=0)
        r2 = client.emit_and_wait(InventoryAdjusted(sku="A1", delta=-2), stream_for("A1"), expected_version=1,
                                  idempotency_key="order-981")
        assert (r1.status, r1.version) == (Outcome.COMMITTED, 1)
        assert (r2.status, r2.version, r2.position) == (Outcome.COMMITTED, 2, r1.position + 1)  # type: ignore[operator]
        assert client.stream_version(stream_for("A1")) == 2
        assert client.stream_version("inventory-never") == 0
        events = client.read_stream(stream_for("A1"))
        assert [(e.version, e.type, e.agent_id) for e in events] == [
            (1, "InventoryUpdated", "order-agent"), (2, "InventoryAdjusted", "order-agent")]
        assert events[1].idempotency_key == "order-981" and events[1].event() == InventoryAdjusted(sku="A1", delta=-2)
        assert events[0].recorded_at <= events[1].recorded_at
        assert [e.version for e in client.read_stream(stream_for("A1"), from_version=1)] == [2]
    assert scalar(settings.require_database(), "SELECT quantity FROM inventory WHERE sku = 'A1'") == 3


def test_ten_agents_race_on_one_stream_exactly_one_wins_each_version(settings: Settings,
                                                                     projector: Projector) -> None:
    """12 agent threads read the same version and emit; exactly one commit per version, the rest
    CONFLICT with the current version, re-read and retry until every agent's sale is in."""
    stream, agents = stream_for("RACE"), 12
    with AgentClient("setup", settings) as c:
        assert c.emit_and_wait(InventoryUpdated(sku="RACE", quantity=1000), stream, expected_version=0).ok
    outcomes: dict[str, list[tuple[Outcome, int | None, int | None]]] = {}
    barrier = threading.Barrier(agents)
    errors: list[BaseException] = []

    def agent(i: int) -> None:
        try:
            with AgentClient(f"agent-{i}", settings) as c:
                log = outcomes.setdefault(c.agent_id, [])
                version = c.stream_version(stream)
                barrier.wait(30)
                while True:
                    r = c.emit_and_wait(InventoryAdjusted(sku="RACE", delta=-(i + 1)), stream,
                                        expected_version=version, idempotency_key=f"sale-{i}-v{version}")
                    log.append((r.status, version, r.current_version))
                    if r.status is Outcome.COMMITTED:
                        return
                    assert r.status is Outcome.CONFLICT and r.current_version is not None
                    assert r.current_version > version
                    version = c.stream_version(stream)
        except BaseException as e:  # surfaced by the main thread
            errors.append(e)

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(agents)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    first_round = [log[0] for log in outcomes.values()]
    assert sum(1 for s, _, _ in first_round if s is Outcome.COMMITTED) == 1
    assert sum(1 for s, _, _ in first_round if s is Outcome.CONFLICT) == agents - 1
    db = settings.require_database()
    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT version, payload, agent_id FROM events WHERE stream = %s ORDER BY version",
                            (stream,)).fetchall()
        model = conn.execute("SELECT quantity, version FROM inventory WHERE sku = 'RACE'").fetchone()
    assert [v for v, _, _ in rows] == list(range(1, agents + 2))  # one commit per version, no gap
    sequential = 1000 + sum(int(p["delta"]) for _, p, _ in rows[1:])
    assert sequential == 1000 - sum(range(1, agents + 1))
    assert model == (sequential, agents + 1)


def test_same_key_twice_and_after_a_producer_restart_has_one_effect(settings: Settings,
                                                                   projector: Projector) -> None:
    stream = stream_for("IDEM")
    with AgentClient("order-agent", settings) as c:
        first = c.emit_and_wait(InventoryAdjusted(sku="IDEM", delta=-1), stream, idempotency_key="order-1")
        second = c.emit_and_wait(InventoryAdjusted(sku="IDEM", delta=-1), stream, idempotency_key="order-1")
    with AgentClient("order-agent", settings) as restarted:  # a new producer, as after a crash
        third = restarted.emit_and_wait(InventoryAdjusted(sku="IDEM", delta=-1), stream, idempotency_key="order-1")
        reuse = restarted.emit_and_wait(InventoryAdjusted(sku="IDEM", delta=-7), stream, idempotency_key="order-1")
        assert restarted.outcome(second.event_id) == second
    assert first.status is Outcome.COMMITTED
    for dup in (second, third):
        assert (dup.status, dup.position, dup.version) == (Outcome.DUPLICATE, first.position, first.version)
    assert reuse.status is Outcome.REJECTED and reuse.reason_code is ReasonCode.KEY_REUSED
    db = settings.require_database()
    assert scalar(db, "SELECT count(*) FROM events WHERE idempotency_key = 'order-1'") == 1
    assert scalar(db, "SELECT quantity FROM inventory WHERE sku = 'IDEM'") == -1
    assert scalar(db, "SELECT count(*) FROM outcomes WHERE idempotency_key = 'order-1'") == 3


def test_many_in_flight_emits_resolve_and_keep_stream_order(settings: Settings, projector: Projector) -> None:
    with AgentClient("bulk", settings) as c:
        handles = [c.emit(InventoryAdjusted(sku=f"S{i % 5}", delta=1), stream_for(f"S{i % 5}")) for i in range(500)]
        results = [h.result(30) for h in handles]
    assert all(r.status is Outcome.COMMITTED for r in results)
    for sku in range(5):
        versions = [r.version for h, r in zip(handles, results, strict=True) if h.stream == stream_for(f"S{sku}")]
        assert versions == list(range(1, 101))  # emit order within a stream is commit order
    assert scalar(settings.require_database(), "SELECT sum(quantity) FROM inventory") == 500


def test_async_client(settings: Settings, projector: Projector) -> None:
    async def scenario() -> tuple[Outcome, Outcome, int]:
        async with AsyncAgentClient("async-agent", settings) as c:
            a = await c.emit_and_wait(InventoryUpdated(sku="AS", quantity=3), stream_for("AS"), expected_version=0)
            b = await c.emit_and_wait(InventoryUpdated(sku="AS", quantity=4), stream_for("AS"), expected_version=0)
            return a.status, b.status, await c.stream_version(stream_for("AS"))

    assert asyncio.run(scenario()) == (Outcome.COMMITTED, Outcome.CONFLICT, 1)


def test_invalid_event_raises_in_the_sdk_before_anything_is_sent(settings: Settings) -> None:
    with AgentClient("careless", settings) as c:
        before = intake_size(settings)
        with pytest.raises(InvalidEventError, match="quantity"):
            c.emit(InventoryUpdated.model_construct(sku="A1", quantity=-1), stream_for("A1"))
        with pytest.raises(InvalidEventError, match="expected_version"):
            c.emit(InventoryUpdated(sku="A1", quantity=1), stream_for("A1"), expected_version=-3)
        with pytest.raises(InvalidEventError, match="stream"):
            c.emit(InventoryUpdated(sku="A1", quantity=1), "")
        c.flush()
        assert intake_size(settings) == before


def _raw_producer(settings: Settings) -> Producer:
    _, kafka = settings.require_servers()
    return Producer({"bootstrap.servers": kafka})


def test_garbage_and_unknown_types_are_dead_lettered_and_the_projector_carries_on(
    settings: Settings, projector: Projector
) -> None:
    db = settings.require_database()
    with AgentClient("agent-x", settings) as c:
        good = build_envelope("agent-x", InventoryUpdated(sku="DL", quantity=1), stream_for("DL"),
                              expected_version=None, idempotency_key=None, correlation_id=None,
                              causation_id=None, lease=None)
        good_env = json.loads(encode(good)[1])
        unknown = dict(good_env, type="TeleportRequested", event_id=str(uuid.uuid4()))
        bad_payload = dict(good_env, payload={"sku": "DL", "quantity": "lots"}, event_id=str(uuid.uuid4()))
        unknown_handle = c._listener.expect(uuid.UUID(unknown["event_id"]))
        p = _raw_producer(settings)
        p.produce(settings.intake_topic, key=b"inventory-DL", value=b"\x00\x01 not json at all")
        assert c._credential is not None  # the agent signs it, so the agent is told (tests/fix_agents.py)
        p.produce(settings.intake_topic, key=b"inventory-DL", value=sign(json.dumps(unknown).encode(), c._credential))
        p.produce(settings.intake_topic, key=b"inventory-DL", value=json.dumps(bad_payload).encode())
        p.produce(settings.intake_topic, key=b"inventory-DL", value=None)
        assert p.flush(10) == 0
        after = c.emit_and_wait(InventoryUpdated(sku="DL", quantity=9), stream_for("DL"), timeout=30)
        assert after.status is Outcome.COMMITTED  # the projector carried on
        told = unknown_handle.result(30)
        assert told.status is Outcome.REJECTED and told.reason_code is ReasonCode.INVALID
        # The text is the feature here: the reason an operator reads names the unknown type.
        assert "TeleportRequested" in (told.reason or "")
    wait_until(lambda: scalar(db, "SELECT count(*) FROM dead_letters") == 4, what="4 dead letters")
    with psycopg.connect(db) as conn:
        reasons = [r for (r,) in conn.execute('SELECT reason FROM dead_letters ORDER BY "offset"')]
    # Dead letters have no code column: their reason text, written for an operator, is the feature.
    assert "not a valid envelope" in reasons[0]
    assert "unknown event type 'TeleportRequested'" in reasons[1]
    assert "quantity" in reasons[2] and "no value" in reasons[3]
    assert scalar(db, "SELECT count(*) FROM events WHERE stream = 'inventory-DL'") == 1
    # The dead-letter topic carries each message with its reason.
    _, kafka = settings.require_servers()
    cons = Consumer({"bootstrap.servers": kafka, "group.id": "dlq-reader", "fetch.wait.max.ms": 10})
    cons.assign([TopicPartition(settings.dead_letter_topic, 0, 0)])
    reasons_on_topic: list[bytes] = []

    def read_some() -> bool:
        for m in cons.consume(10, 0.2):
            if not m.error():
                reason = dict(m.headers() or []).get("es-dead-letter-reason")
                reasons_on_topic.append(reason.encode() if isinstance(reason, str) else reason or b"")
        return len(reasons_on_topic) >= 4

    wait_until(read_some, what="4 messages on the dead-letter topic")
    cons.close()
    assert any(b"TeleportRequested" in r for r in reasons_on_topic)


def test_event_log_is_append_only_and_tamper_evident(settings: Settings, projector: Projector) -> None:
    db = settings.require_database()
    with AgentClient("auditor-test", settings) as c:
        for q in (1, 2, 3):
            assert c.emit_and_wait(InventoryUpdated(sku="H", quantity=q), stream_for("H")).ok
        conflict = c.emit_and_wait(InventoryUpdated(sku="H", quantity=9), stream_for("H"), expected_version=0)
        assert conflict.status is Outcome.CONFLICT  # gives the outcomes table a row to protect
    for statement in ("UPDATE events SET payload = '{}'", "DELETE FROM events", "TRUNCATE events",
                      "DELETE FROM outcomes", "UPDATE outcomes SET reason = 'edited'", "TRUNCATE outcomes"):
        with psycopg.connect(db) as conn:
            with pytest.raises(psycopg.Error) as caught:
                conn.execute(statement)
            assert isinstance(convert(caught.value), AppendOnlyViolation), statement
    with psycopg.connect(db) as conn, conn.cursor() as cur:
        assert verify_chain(cur).ok and verify_chain(cur).checked == 3
        # A superuser who switches the trigger off can still edit a row; the chain shows it.
        cur.execute("ALTER TABLE events DISABLE TRIGGER events_append_only")
        cur.execute("UPDATE events SET payload = '{\"sku\": \"H\", \"quantity\": 99}' WHERE version = 2 "
                    "AND stream = 'inventory-H'")
        report = verify_chain(cur)
        conn.rollback()
    assert not report.ok and report.first_bad_position is not None and report.checked >= 1


@pytest.mark.slow
def test_projector_learns_app_types_from_app_modules(
    settings: Settings, spawn_projector: Callable[..., ProjectorProcess]
) -> None:
    """Agents and projector are separate codebases: the projector imports EVENTSTORE_APP_MODULES."""
    from tests.app_events import DocumentTitled

    db = settings.require_database()
    plain = spawn_projector(EVENTSTORE_APP_MODULES="eventstore.examples.inventory")
    with AgentClient("writer", settings) as c:
        r = c.emit_and_wait(DocumentTitled(doc="d1", title="Draft"), "doc-d1", timeout=60)
        assert r.status is Outcome.REJECTED and r.reason_code is ReasonCode.INVALID
        assert "EVENTSTORE_APP_MODULES" in (r.reason or "")  # the text is the feature: it says what to set
        plain.stop()
        spawn_projector(EVENTSTORE_APP_MODULES="eventstore.examples.inventory,tests.app_events")
        r = c.emit_and_wait(DocumentTitled(doc="d1", title="Final"), "doc-d1", timeout=60)
        assert r.status is Outcome.COMMITTED
    assert scalar(db, "SELECT title FROM document_titles WHERE doc = 'd1'") == "Final"


def test_read_model_failure_dead_letters_only_the_poison_event(settings: Settings) -> None:
    """An inventory event on the wrong stream makes the handler fail: that event is rejected, the
    rest of its batch commits."""
    s = settings.replace(batch_size=500)
    with AgentClient("mixed", s) as c:
        handles = [c.emit(InventoryAdjusted(sku="P", delta=1), stream_for("P")) for _ in range(5)]
        poison = c.emit(InventoryAdjusted(sku="P", delta=1), "inventory-not-P")
        handles += [c.emit(InventoryAdjusted(sku="P", delta=1), stream_for("P")) for _ in range(5)]
        c.flush()
        with Projector(s) as p:
            assert p.ready.wait(30)
            results = [h.result(30) for h in handles]
            bad = poison.result(30)
    assert all(r.status is Outcome.COMMITTED for r in results)
    assert bad.status is Outcome.REJECTED and bad.reason_code is ReasonCode.INVALID
    assert scalar(settings.require_database(), "SELECT quantity FROM inventory WHERE sku = 'P'") == 10


class _Fragile(ReadModel):
    """A read model whose SQL fails on one payload (division by zero), to isolate a poison event."""

    name = "fragile"
    table = "fragile"

    def setup(self, cur: psycopg.Cursor[Any]) -> None:
        cur.execute("CREATE TABLE IF NOT EXISTS fragile (sku text PRIMARY KEY, total bigint NOT NULL)")

    @ReadModel.on(InventoryAdjusted)
    def adjusted(self, cur: psycopg.Cursor[Any], ev: RecordedEvent, typed: Any) -> None:
        cur.execute("INSERT INTO fragile VALUES (%s, 100 / %s) ON CONFLICT (sku) DO UPDATE "
                    "SET total = fragile.total + EXCLUDED.total", (typed.sku, typed.delta))


def test_read_model_sql_error_rejects_only_that_event(settings: Settings) -> None:
    with AgentClient("fragile-writer", settings) as c:
        handles = [c.emit(InventoryAdjusted(sku="Q", delta=d), stream_for("Q")) for d in (1, 2, 0, 4)]
        c.flush()
        with Projector(settings, models=[_Fragile()]) as p:
            assert p.ready.wait(30)
            results = [h.result(30) for h in handles]
    assert [r.status for r in results] == [Outcome.COMMITTED, Outcome.COMMITTED, Outcome.REJECTED,
                                           Outcome.COMMITTED]
    assert results[2].reason_code is ReasonCode.INVALID
    # The text is the feature: it names the failing read model and the database's error.
    assert "fragile" in (results[2].reason or "") and "division by zero" in (results[2].reason or "")
    assert scalar(settings.require_database(), "SELECT total FROM fragile WHERE sku = 'Q'") == 100 + 50 + 25


def test_values_postgres_cannot_store_and_forged_history_never_stop_the_projector(
    settings: Settings, projector: Projector
) -> None:
    """Each of these once could have crash-looped a projector; now each is dead-lettered with a reason."""
    db = settings.require_database()
    with AgentClient("fuzzer", settings) as c:
        first = c.emit_and_wait(InventoryUpdated(sku="N", quantity=1), stream_for("N"))
        base = json.loads(encode(build_envelope("fuzzer", InventoryUpdated(sku="N", quantity=2), stream_for("N"),
                                                expected_version=None, idempotency_key=None, correlation_id=None,
                                                causation_id=None, lease=None))[1])

        def variant(**changes: object) -> dict[str, object]:
            return {**base, "event_id": str(uuid.uuid4()), "idempotency_key": str(uuid.uuid4()), **changes}

        cases: dict[str, dict[str, object]] = {
            "nul": variant(payload={"sku": "N\u0000", "quantity": 2}),
            "bigint": variant(expected_version=2**64),
            "reserved": variant(stream="lease-inventory:N"),
            "forged": variant(type="LeaseGranted", payload={"resource": "r", "agent_id": "x", "mode": "exclusive",
                                                            "token": 1, "ttl_seconds": 1.0}),
            "id-reuse": variant(event_id=str(first.event_id)),
            "nul-reason": {"\u0000": 1},
        }
        waiting = {name: c._listener.expect(uuid.UUID(str(v["event_id"]))) for name, v in cases.items()
                   if "event_id" in v and name != "id-reuse"}
        p = _raw_producer(settings)
        cred = c._credential  # signed by the agent (tests/fix_agents.py), so each case gets past authentication
        assert cred is not None
        for v in cases.values():
            p.produce(settings.intake_topic, key=b"inventory-N", value=sign(json.dumps(v).encode(), cred))
        assert p.flush(10) == 0
        after = c.emit_and_wait(InventoryUpdated(sku="N", quantity=3), stream_for("N"), timeout=30)
        assert after.status is Outcome.COMMITTED and after.version == 2  # the projector carried on
        decided = {name: fut.result(30) for name, fut in waiting.items()}
    assert {name: r.reason_code for name, r in decided.items()} == dict.fromkeys(decided, ReasonCode.INVALID)
    reasons = {name: r.reason or "" for name, r in decided.items()}
    # Beyond the code, the text is the feature: each reason names the field or rule that refused it.
    assert "NUL" in reasons["nul"] and "expected_version" in reasons["bigint"]
    assert "reserved" in reasons["reserved"] and "server only" in reasons["forged"]
    wait_until(lambda: scalar(db, "SELECT count(*) FROM dead_letters") == len(cases), what="all dead-lettered")
    assert scalar(db, "SELECT count(*) FROM dead_letters WHERE reason LIKE %s", ("%refused%",)) == 1  # id reuse
    assert scalar(db, "SELECT count(*) FROM events") == 2
