"""Envelope codec, SDK-side validation, hashing, outcome packing and backoff: pure, no servers."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime

import pytest

from eventstore.core.backoff import backoff_delays
from eventstore.core.errors import ConfigurationError, DecodeError, InvalidEventError, UnknownEventTypeError
from eventstore.core.events import registry
from eventstore.core.hashing import GENESIS, canonical_json, chain_hash, intent_hash
from eventstore.core.outcomes import EmitResult, Outcome
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryAdjusted, InventoryUpdated
from eventstore.sdk.client import build_envelope
from eventstore.wire.envelope import Envelope, LeaseRef, decode, encode, salvage_ids
from eventstore.wire.notifications import MAX_PAYLOAD, pack, unpack


def envelope(**kw: object) -> Envelope:
    return build_envelope("agent-1", InventoryUpdated(sku="A1", quantity=2), "inventory-A1",
                          expected_version=kw.get("expected_version", 5),  # type: ignore[arg-type]
                          idempotency_key="order-981", correlation_id=None, causation_id=None,
                          lease=LeaseRef(resource="inventory:A1", token=3))


def test_envelope_round_trips_with_routing_headers() -> None:
    env = envelope()
    key, value, headers = encode(env)
    assert key == b"inventory-A1"
    assert dict(headers)["es-type"] == b"InventoryUpdated"
    assert dict(headers)["es-agent"] == b"agent-1"
    assert decode(value) == env
    wire = json.loads(value)
    assert wire["payload"] == {"sku": "A1", "quantity": 2} and wire["schema_version"] == 1
    assert wire["lease"] == {"resource": "inventory:A1", "token": 3}


@pytest.mark.parametrize("value, fragment", [
    (b"\x00\xffgarbage", "not a valid envelope"),
    (b"{}", "event_id"),
    (None, "no value"),
    (b'{"event_id": "nope"}', "event_id"),
])
def test_decode_names_what_is_wrong(value: bytes | None, fragment: str) -> None:
    with pytest.raises(DecodeError, match=fragment):
        decode(value)


def test_salvage_reads_ids_from_an_envelope_that_does_not_validate() -> None:
    env = envelope()
    obj = json.loads(encode(env)[1])
    obj["payload"] = "not an object"
    assert salvage_ids(json.dumps(obj).encode()) == (env.event_id, "agent-1", "order-981")
    assert salvage_ids(b"garbage") is None


def test_sdk_refuses_invalid_events_and_fields_before_sending() -> None:
    with pytest.raises(InvalidEventError, match="quantity"):
        build_envelope("a", InventoryUpdated.model_construct(sku="A1", quantity=-5), "inventory-A1",
                       expected_version=None, idempotency_key=None, correlation_id=None, causation_id=None,
                       lease=None)
    cases: list[tuple[str, object, str | None, str]] = [
        ("", None, None, "stream"), ("x" * 201, None, None, "at most 200"), ("a\nb", None, None, "control"),
        ("s", -1, None, "expected_version"), ("s", True, None, "expected_version"),
        ("s", "3", None, "expected_version"), ("s", None, "", "idempotency_key"),
    ]
    for stream, expected, key, fragment in cases:
        with pytest.raises(InvalidEventError, match=fragment):
            build_envelope("a", InventoryUpdated(sku="A1", quantity=1), stream,
                           expected_version=expected,  # type: ignore[arg-type]
                           idempotency_key=key, correlation_id=None, causation_id=None, lease=None)


def test_sdk_refuses_ids_and_leases_of_the_wrong_type() -> None:
    ok = InventoryUpdated(sku="A1", quantity=1)
    with pytest.raises(InvalidEventError, match="correlation_id"):
        build_envelope("a", ok, "s", expected_version=None, idempotency_key=None,
                       correlation_id="not-a-uuid", causation_id=None, lease=None)  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError, match="lease"):
        build_envelope("a", ok, "s", expected_version=None, idempotency_key=None,
                       correlation_id=None, causation_id=None, lease=("r", 1))  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError, match="agent_id"):
        build_envelope("", ok, "s", expected_version=None, idempotency_key=None,
                       correlation_id=None, causation_id=None, lease=None)


def test_sdk_refuses_nul_reserved_streams_and_server_only_types() -> None:
    from eventstore.core.lockevents import LeaseGranted

    def env(event: object, stream: str) -> None:
        build_envelope("a", event, stream, expected_version=None, idempotency_key=None,  # type: ignore[arg-type]
                       correlation_id=None, causation_id=None, lease=None)

    with pytest.raises(InvalidEventError, match="NUL"):
        env(InventoryUpdated(sku="A\x00", quantity=1), "inventory-A")
    with pytest.raises(InvalidEventError, match="reserved"):
        env(InventoryUpdated(sku="A", quantity=1), "lease-inventory:A")
    with pytest.raises(InvalidEventError, match="server only"):
        env(LeaseGranted(resource="r", agent_id="a", mode="exclusive", token=1, ttl_seconds=1.0), "inventory-A")


def test_registry_decodes_known_types_and_names_unknown_ones() -> None:
    assert registry.decode("InventoryAdjusted", 1, {"sku": "A", "delta": -1}) == InventoryAdjusted(sku="A", delta=-1)
    with pytest.raises(UnknownEventTypeError, match="EVENTSTORE_APP_MODULES"):
        registry.decode("NoSuchEvent", 1, {})
    with pytest.raises(UnknownEventTypeError):
        registry.decode("InventoryAdjusted", 2, {"sku": "A", "delta": 1})
    with pytest.raises(InvalidEventError, match="delta"):
        registry.decode("InventoryAdjusted", 1, {"sku": "A", "delta": "many"})


def test_intent_hash_separates_fields_and_ignores_key_order() -> None:
    a = intent_hash("T", 1, "s", canonical_json({"a": 1, "b": 2}))
    assert a == intent_hash("T", 1, "s", canonical_json({"b": 2, "a": 1}))
    assert a != intent_hash("T", 1, "s2", canonical_json({"a": 1, "b": 2}))
    assert intent_hash("ab", 1, "c", "{}") != intent_hash("a", 1, "bc", "{}")


def test_chain_hash_depends_on_previous_hash_and_every_field() -> None:
    base: dict[str, object] = dict(
        position=1, event_id=str(uuid.uuid4()), stream="s", version=1, agent_id="a", idempotency_key="k",
        correlation_id="c", causation_id=None, occurred_at=None, recorded_at=datetime.now(UTC),
        lease_resource=None, fencing_token=None, intent=b"i",
    )
    h = chain_hash(GENESIS, **base)  # type: ignore[arg-type]
    assert h != chain_hash(b"\x01" * 32, **base)  # type: ignore[arg-type]
    for field, other in [("position", 2), ("agent_id", "b"), ("fencing_token", 1), ("intent", b"j")]:
        assert chain_hash(GENESIS, **{**base, field: other}) != h  # type: ignore[arg-type]


def test_outcome_packing_stays_under_the_notify_limit_and_round_trips() -> None:
    results = [EmitResult(uuid.uuid4(), Outcome.CONFLICT, "inventory-" + "x" * 100, None, None, i, "r" * 300)
               for i in range(200)]
    chunks = pack(results)
    assert len(chunks) > 1 and all(len(c.encode()) < MAX_PAYLOAD for c in chunks)
    assert [r for c in chunks for r in unpack(c)] == results
    huge = EmitResult(uuid.uuid4(), Outcome.REJECTED, "s", None, None, None, "y" * 20_000)
    (only,) = pack([huge])
    assert unpack(only)[0].status is Outcome.REJECTED


def test_backoff_grows_and_is_capped() -> None:
    d = backoff_delays(base=0.01, cap=0.5, rng=random.Random(1))
    delays = [next(d) for _ in range(40)]
    assert all(0 <= x <= 0.5 for x in delays)
    assert max(delays[:3]) <= 0.04 and max(delays[20:]) > 0.1


def test_settings_from_environment_and_errors_naming_the_variable() -> None:
    s = Settings.from_env({"EVENTSTORE_DATABASE_URL": "postgresql://x/db", "EVENTSTORE_KAFKA_BOOTSTRAP": "k:9092",
                           "EVENTSTORE_NAMESPACE": "prod", "EVENTSTORE_KAFKA_CONFIG": '{"linger.ms": 5}',
                           "EVENTSTORE_APP_MODULES": "a.b, c", "EVENTSTORE_BATCH_SIZE": "500"})
    assert s.intake_topic == "prod.intake" and s.kafka_config == {"linger.ms": 5}
    assert s.app_modules == ("a.b", "c") and s.batch_size == 500
    with pytest.raises(ConfigurationError, match="EVENTSTORE_BATCH_SIZE"):
        Settings.from_env({"EVENTSTORE_BATCH_SIZE": "many"})
    with pytest.raises(ConfigurationError, match="EVENTSTORE_KAFKA_CONFIG"):
        Settings.from_env({"EVENTSTORE_KAFKA_CONFIG": "[1]"})
    with pytest.raises(ConfigurationError, match="EVENTSTORE_NAMESPACE"):
        Settings.from_env({"EVENTSTORE_NAMESPACE": "bad name"})
    with pytest.raises(ConfigurationError, match="EVENTSTORE_DATABASE_URL"):
        Settings().require_servers()


def test_committed_event_round_trips_and_bad_messages_are_named() -> None:
    from eventstore.core.records import RecordedEvent
    from eventstore.wire.committed import decode_committed, encode_committed

    eid = uuid.uuid4()
    ev = RecordedEvent(position=7, event_id=eid, stream="inventory-A1", version=3, type="InventoryAdjusted",
                       schema_version=1, payload={"sku": "A1", "delta": -1}, agent_id="agent",
                       idempotency_key="key-1", correlation_id=eid, causation_id=uuid.uuid4(),
                       occurred_at=datetime.now(UTC), recorded_at=datetime.now(UTC),
                       lease_resource="inventory:A1", fencing_token=4)
    key, value, headers = encode_committed(ev)
    assert key == b"inventory-A1" and ("es-position", "7") in headers
    assert decode_committed(value) == ev
    from dataclasses import replace

    other = replace(ev, correlation_id=uuid.uuid4(), causation_id=None, occurred_at=None)
    assert decode_committed(encode_committed(other)[1]) == other
    for bad in (b"", b"[]", b"{}", value.replace(b'"payload":{', b'"payload":[{').replace(b'},"agent', b'}],"agent')):
        with pytest.raises(DecodeError, match="not a committed-event message"):
            decode_committed(bad)
