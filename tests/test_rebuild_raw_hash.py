"""The subscriber hashes a committed message's payload bytes as received (issue 11, aim 5): a forger who hashes
bytes of his own (not the canonical text the projector hashed) gets past the per-message check, but the run's
last hash is not the log's, so nothing of it is applied: the log's events are, and the view ends as the log."""

from __future__ import annotations

import hashlib
import json

import psycopg
from confluent_kafka import Producer

from consumers import LocalView, Subscriber
from eventstore.core.hashing import chain_link, hashed_time
from eventstore.core.records import DirectEvent, RecordedEvent
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryUpdated, quantity_reducer, stream_for
from eventstore.kafka.config import ensure_topics, producer_config
from eventstore.postgres import eventlog
from eventstore.wire.committed import decode_linked, encode_committed
from tests.fix_projector import wait_until

SKU = "R"
STREAM = stream_for(SKU)


def commit(settings: Settings, *quantities: int) -> list[RecordedEvent]:
    with psycopg.connect(settings.require_database()) as conn, conn.cursor() as cur:
        return eventlog.append_direct(cur, [DirectEvent(STREAM, InventoryUpdated(sku=SKU, quantity=q), "a")
                                            for q in quantities])


def forged_over(ev: RecordedEvent, payload_text: bytes) -> bytes:
    """``ev``'s committed message with ``payload_text`` as its payload and a hash computed over those bytes."""
    if ev.prev_hash is None or ev.hash is None:
        raise ValueError("a logged event has a chain link")
    intent = hashlib.sha256(f"{ev.type}\x00{ev.schema_version}\x00{ev.stream}\x00".encode() + payload_text
                            + b"\x00").digest()
    link = chain_link(ev.prev_hash, ev.position, str(ev.event_id), ev.stream, ev.version, ev.agent_id,
                      ev.idempotency_key, str(ev.correlation_id), "", hashed_time(ev.occurred_at),
                      hashed_time(ev.recorded_at), "", "", intent)
    body = json.loads(encode_committed(ev)[1])
    body["payload"], body["hash"] = "@PAYLOAD@", link.hex()
    value = json.dumps(body, separators=(",", ":")).encode().replace(b'"@PAYLOAD@"', payload_text)
    got, got_link = decode_linked(value)
    assert got_link == got.hash and got.payload["quantity"] == 999  # passes the message check by itself
    return value


def produce(settings: Settings, *values: bytes) -> None:
    """What anyone allowed to write to the committed topic can do (no publisher runs in these tests)."""
    ensure_topics(settings, {settings.committed_topic: 1})
    producer = Producer(producer_config(settings))
    for value in values:
        producer.produce(settings.committed_topic, value=value, key=STREAM.encode())
    assert producer.flush(30) == 0


def test_a_hash_forged_over_other_payload_bytes_is_never_applied(settings: Settings) -> None:
    first, second, third, fourth = commit(settings, 1, 2, 3, 4)
    seen: list[int] = []
    view = LocalView(quantity_reducer)
    forged = forged_over(third, b'{"quantity": 999, "sku": "R"}')
    # Genuine 1 and 2, the forged 3 ending the fetched run, then (second round) the forged 3 again in the
    # middle of a run, followed by the genuine 4 (which chains onto the log's 3, not onto the forgery).
    produce(settings, encode_committed(first)[1], encode_committed(second)[1], forged)
    with Subscriber("raw-hash", {InventoryUpdated: lambda ev: seen.append(ev.payload["quantity"])}, view,
                    settings=settings, catch_up_from_db=False, from_beginning=True) as sub:
        view.wait_for_position(3, 30)
        wait_until(lambda: sub.forgeries >= 1, 30, "the subscriber to refuse the forged run")
        st = view.get(STREAM)
        assert st is not None and (st.state, st.version) == (3, 3) and 999 not in seen
        produce(settings, forged, encode_committed(fourth)[1])
        view.wait_for_position(4, 30)
        st = view.get(STREAM)
        assert st is not None and (st.state, st.version, st.position) == (4, 4, 4)
        assert seen == [1, 2, 3, 4] and sub.error is None


def test_a_forged_run_in_the_middle_is_replaced_by_the_log_and_the_genuine_rest_applied(settings: Settings) -> None:
    events = commit(settings, *range(1, 7))
    seen: list[int] = []
    view = LocalView(quantity_reducer)
    forged = forged_over(events[2], b'{"sku":"R","quantity":999}')
    produce(settings, *(encode_committed(ev)[1] for ev in events[:2]), forged,
            *(encode_committed(ev)[1] for ev in events[3:]))
    with Subscriber("raw-hash-mid", {InventoryUpdated: lambda ev: seen.append(ev.payload["quantity"])}, view,
                    settings=settings, catch_up_from_db=False, from_beginning=True) as sub:
        view.wait_for_position(6, 30)
        st = view.get(STREAM)
        assert st is not None and (st.state, st.version, st.position) == (6, 6, 6)
        assert seen == [1, 2, 3, 4, 5, 6] and sub.forgeries == 1 and sub.error is None
