"""AgentClient.emit_many against the real broker and database: every outcome arrives, per-stream order
is the order of the items, per-item options apply, and an invalid item sends nothing."""

from __future__ import annotations

import time

import pytest

from eventstore import AgentClient, Outcome, Projector
from eventstore.core.errors import BrokerError, InvalidEventError
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryAdjusted, InventoryUpdated, stream_for
from tests.app_events import DocumentTitled
from tests.fix_projector import scalar


def test_emit_many_all_outcomes_arrive_in_stream_order(settings: Settings, projector: Projector) -> None:
    skus = [f"M{i}" for i in range(7)]
    items: list[tuple[InventoryAdjusted, str]] = [
        (InventoryAdjusted(sku=skus[i % 7], delta=i), stream_for(skus[i % 7])) for i in range(700)]
    with AgentClient("many-agent", settings) as client:
        handles = client.emit_many(items)
        results = [h.result(60) for h in handles]
        assert [r.status for r in results] == [Outcome.COMMITTED] * 700
        for k, sku in enumerate(skus):
            mine = results[k::7]
            # versions follow the order of the items on each stream, without a gap
            assert [r.version for r in mine] == list(range(1, 101))
            stored = client.read_stream(stream_for(sku))
            assert [e.payload["delta"] for e in stored] == [i for i in range(700) if i % 7 == k]
            assert [e.event_id for e in stored] == [h.event_id for h in handles[k::7]]
    total = scalar(settings.require_database(), "SELECT sum(quantity) FROM inventory WHERE sku LIKE 'M%%'")
    assert total == sum(range(700))


def test_emit_many_payloads_match_their_items_across_chunks_and_classes(settings: Settings,
                                                                        projector: Projector) -> None:
    # 150 items: the first chunk of one class, later chunks mixing two, so some chunks are dumped by one
    # pydantic call and others event by event (AgentClient.dump_chunk); each stored payload is its item's
    events: list[InventoryAdjusted | InventoryUpdated] = [
        InventoryAdjusted(sku="MIX", delta=i) if i < 90 or i % 3 else InventoryUpdated(sku="MIX", quantity=i)
        for i in range(150)]
    s = stream_for("MIX")
    with AgentClient("many-mixed", settings) as client:
        assert client.dump_chunk < 90
        handles = client.emit_many([(e, s) for e in events])
        assert all(h.result(60).status is Outcome.COMMITTED for h in handles)
        stored = client.read_stream(s)
    assert [(e.type, e.payload) for e in stored] == [(ev.event_type, ev.model_dump(mode="json")) for ev in events]


def test_emit_many_applies_per_item_options(settings: Settings, projector: Projector) -> None:
    s = stream_for("OPT")
    with AgentClient("many-opts", settings) as client:
        first = client.emit_many([
            (InventoryUpdated(sku="OPT", quantity=5), s, {"expected_version": 0, "idempotency_key": "k-1"}),
            (InventoryAdjusted(sku="OPT", delta=1), s, {"expected_version": 0}),  # stale: conflict
        ])
        r1, r2 = (h.result(30) for h in first)
        assert (r1.status, r1.version) == (Outcome.COMMITTED, 1)
        assert (r2.status, r2.current_version) == (Outcome.CONFLICT, 1)
        again = client.emit_many([(InventoryUpdated(sku="OPT", quantity=5), s, {"idempotency_key": "k-1"})])
        dup = again[0].result(30)
        assert (dup.status, dup.position) == (Outcome.DUPLICATE, r1.position)


def test_emit_many_invalid_item_sends_nothing(settings: Settings, projector: Projector) -> None:
    good = (InventoryAdjusted(sku="BAD0", delta=1), stream_for("BAD0"))
    with AgentClient("many-bad", settings) as client:
        with pytest.raises(InvalidEventError, match="item 1"):
            client.emit_many([good, (InventoryAdjusted(sku="BAD0", delta=2), "")])
        # a later event on the same stream is the first one there: nothing of the failed call arrived
        r = client.emit_and_wait(InventoryAdjusted(sku="BAD0", delta=3), stream_for("BAD0"), timeout=30)
        assert (r.status, r.version) == (Outcome.COMMITTED, 1)
        client.flush()
    assert scalar(settings.require_database(), "SELECT count(*) FROM events WHERE stream = %s",
                  (stream_for("BAD0"),)) == 1


def test_a_message_the_broker_never_takes_fails_its_handle(settings: Settings) -> None:
    """The producer's one delivery callback finds the failed message's handle by its event-id header."""
    lost = settings.replace(namespace=settings.namespace + "-nowhere",  # an intake topic nobody created
                            kafka_config={**settings.kafka_config, "message.timeout.ms": 1500})
    with AgentClient("many-lost", lost, ensure_topic=False) as client:
        one = client.emit(InventoryAdjusted(sku="L1", delta=1), stream_for("L1"))
        batch = client.emit_many([(InventoryAdjusted(sku="L2", delta=i), stream_for("L2")) for i in range(3)])
        for h in [one, *batch]:
            with pytest.raises(BrokerError, match=f"did not take event {h.event_id}"):
                h.result(30)
        assert client._listener.pending == 0


def test_lone_emits_and_batches_do_not_wait_out_the_linger(settings: Settings) -> None:
    """The producer lingers to batch a dense stream of emits; a sparse emit, an emit_many batch and an
    emit_and_wait are sent at once (measured here with a linger far longer than the bound)."""
    lingering = settings.replace(kafka_config={**settings.kafka_config, "linger.ms": 5000})
    with AgentClient("many-lone", lingering) as client:
        client.emit(InventoryAdjusted(sku="Z0", delta=1), stream_for("Z0"))
        client.flush(30)  # connected, and the topic's partitions known (until then a message waits for them)
        for send in (lambda: client.emit(InventoryAdjusted(sku="Z1", delta=1), stream_for("Z1")),
                     lambda: client.emit_many([(InventoryAdjusted(sku="Z2", delta=i), stream_for("Z2"))
                                               for i in range(3)])):
            time.sleep(0.01)  # sparse: nothing emitted for a while
            t0 = time.monotonic()
            send()
            while len(client._producer) and time.monotonic() - t0 < 4.0:
                time.sleep(0.005)
            assert time.monotonic() - t0 < 2.5, "the message waited out linger.ms"


def test_a_message_the_kafka_client_refuses_is_a_broker_error_and_leaves_nothing_pending(
    settings: Settings, projector: Projector
) -> None:
    """Found in review: produce() raising KafkaException (here: a message over the client's
    message.max.bytes) reached the caller raw and left its handle pending."""
    small = settings.replace(kafka_config={**settings.kafka_config, "message.max.bytes": 1000})
    big = DocumentTitled(doc="big", title="x" * 1500)
    with AgentClient("refused-agent", small) as client:
        with pytest.raises(BrokerError, match="refused the message"):
            client.emit(big, stream_for("BIG"))
        assert len(client._pending) == 0
        ok = (InventoryUpdated(sku="FINE", quantity=3), stream_for("FINE"))
        with pytest.raises(BrokerError, match=r"emit_many item 1: .*items before it were sent"):
            client.emit_many([ok, (big, stream_for("BIG")), ok])
        deadline = time.monotonic() + 60
        while len(client._pending) and time.monotonic() < deadline:  # item 0 was sent: its outcome arrives
            time.sleep(0.05)
        assert len(client._pending) == 0
    assert scalar(settings.require_database(), "SELECT count(*) FROM events WHERE stream = %s",
                  (stream_for("FINE"),)) == 1
