"""The subscriber's one-pass committed-topic decoder (``decode_linked``, issue 11) gives exactly what the
reference gives: ``decode_committed`` for the event and ``recorded_hash`` over the message's own
``prev_hash`` for the chain check, or the same refusal, for genuine messages from both publisher paths,
edge values, hostile bytes and random events (no servers)."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore.core.errors import DecodeError
from eventstore.core.hashing import GENESIS, canonical_json, chain_link, hashed_time, recorded_hash
from eventstore.core.records import RecordedEvent
from eventstore.wire.committed import (
    PayloadOmitted,
    _decode_fast,
    decode_batch,
    decode_committed,
    decode_linked,
    encode_recorded,
    encode_row,
    reference_linked,
)


def event(position: int = 7, **changes: Any) -> RecordedEvent:
    """A recorded event with its real chain link over a made-up previous hash."""
    eid = uuid.uuid4()
    fields: dict[str, Any] = dict(
        position=position, event_id=eid, stream="inventory-A1", version=3, type="InventoryAdjusted",
        schema_version=1, payload={"sku": "A1", "delta": -1}, agent_id="agent", idempotency_key=f"k:{eid}",
        correlation_id=eid, causation_id=None, occurred_at=None,
        recorded_at=datetime(2026, 11, 28, 10, 48, 25, 177831, tzinfo=UTC), lease_resource=None,
        fencing_token=None, prev_hash=bytes(range(32)))
    fields.update(changes)
    ev = RecordedEvent(**fields)
    if ev.prev_hash is None:
        return ev
    return RecordedEvent(**{**fields, "hash": recorded_hash(ev, ev.prev_hash)})


def row_of(ev: RecordedEvent) -> tuple[Any, ...]:
    """The publisher's text row of an event (COMMITTED_ROW's forms: jsonb's payload text, ``.US`` stamps)."""
    def stamp(t: datetime | None) -> str | None:
        return None if t is None else t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    return (ev.position, str(ev.event_id), ev.stream, ev.version, ev.type, ev.schema_version,
            json.dumps(ev.payload, ensure_ascii=False), ev.agent_id, ev.idempotency_key, str(ev.correlation_id),
            None if ev.causation_id is None else str(ev.causation_id), stamp(ev.occurred_at),
            stamp(ev.recorded_at), ev.lease_resource, ev.fencing_token,
            None if ev.prev_hash is None else ev.prev_hash.hex(), None if ev.hash is None else ev.hash.hex())


def reference(value: bytes | None) -> tuple[RecordedEvent, bytes | None]:
    ev = decode_committed(value)
    if ev.prev_hash is None or ev.hash is None:
        return ev, None
    return ev, recorded_hash(ev, ev.prev_hash)


def agree(value: bytes | None) -> tuple[RecordedEvent, bytes | None] | None:
    """Both decoders give equal events and hashes, or both refuse with the same error and message."""
    try:
        slow = reference(value)
    except DecodeError as e:
        with pytest.raises(type(e)) as got:
            decode_linked(value)
        assert str(got.value) == str(e)
        return None
    fast = decode_linked(value)
    assert repr(fast) == repr(slow)  # every field, in order (repr: a NaN in a payload is not equal to itself)
    assert fast[1] == slow[1] and list(fast[0].__dict__) == list(slow[0].__dict__)
    assert [type(v) for v in fast[0].__dict__.values()] == [type(v) for v in slow[0].__dict__.values()]
    return fast


def good(**changes: Any) -> bytes:
    return encode_recorded(event(**changes))[2]


def edited(**changes: Any) -> bytes:
    body = json.loads(good())
    body.update(changes)
    return json.dumps(body, ensure_ascii=False).encode()


def test_messages_of_both_publisher_paths_take_the_fast_path_and_chain() -> None:
    later = datetime(2026, 1, 2, 3, 4, 5, 600, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    for ev in (event(), event(causation_id=uuid.uuid4(), correlation_id=uuid.uuid4(), occurred_at=later,
                              lease_resource="inventory:A1", fencing_token=4,
                              payload={"z": 1, "a": [1.5, "\U0001f600", {"n": None}], "big": 10**30})):
        for value in (encode_recorded(ev)[2], encode_row(row_of(ev))[2]):
            assert _decode_fast(value) is not None, value
            got, link = agree(value) or (None, None)
            assert got == ev and link == ev.hash


def test_the_chain_check_fails_for_a_changed_field_as_in_the_reference() -> None:
    value = good()
    forged = value.replace(b'"delta":-1', b'"delta":-2')
    ev, link = agree(forged) or (None, None)
    assert ev is not None and link is not None and link != ev.hash


@pytest.mark.parametrize("changes", [
    {"event_id": "12345678-1234-1234-1234-123456789ABC"}, {"event_id": "{12345678-1234-1234-1234-123456789abc}"},
    {"event_id": "urn:uuid:12345678-1234-1234-1234-123456789abc"}, {"event_id": "12345678123412341234123456789abc"},
    {"event_id": "0x345678-1234-1234-1234-123456789abc"}, {"event_id": "+2345678-1234-1234-1234-123456789abc"},
    {"event_id": "1_345678-1234-1234-1234-123456789abc"}, {"event_id": " 2345678-1234-1234-1234-123456789abc"},
    {"event_id": "12345678-1234-1234-1234-123456789abg"}, {"event_id": 5}, {"correlation_id": "x"},
    {"correlation_id": "12345678-1234-1234-1234-123456789ABC"}, {"causation_id": "12345678123412341234123456789abc"},
    {"causation_id": "12345678-1234-1234-1234-123456789abc"},
    {"recorded_at": "2026-W48-6T10:48:25.177831Z"}, {"recorded_at": "2026-11-28T10:48:25.000000Z"},
    {"recorded_at": "2026-11-28T10:48:25Z"}, {"recorded_at": "2026-11-28T10:48:25.177831+00:00"},
    {"recorded_at": "2026-11-28T10:48:25.177831+05:30"}, {"recorded_at": "2026-11-28T10:48:25.1778319Z"},
    {"recorded_at": "2026-11-28T10:48:25.177Z"}, {"recorded_at": "2026-11-28 10:48:25.177831Z"},
    {"recorded_at": "2026-11-28T10:48:25.177831"}, {"recorded_at": "20261128T104825.177831Z"},
    {"recorded_at": "2026-11-28T10:4825.1778310Z"}, {"recorded_at": 5}, {"recorded_at": None},
    {"occurred_at": "2026-11-28T10:48:25.177831Z"}, {"occurred_at": "2026-11-28T10:48:25.5-03:00"},
    {"occurred_at": "0001-01-01T00:00:00.000001Z"}, {"occurred_at": "garbage"},
    {"position": 7.0}, {"position": 7.5}, {"position": "7"}, {"position": True}, {"position": 2**70},
    {"version": -1}, {"schema_version": None}, {"stream": 5}, {"type": None}, {"agent_id": ["a"]},
    {"lease_resource": 5}, {"lease_resource": ""}, {"lease_resource": {"a": 1}}, {"fencing_token": True},
    {"fencing_token": "4"}, {"fencing_token": 4.0}, {"payload": []}, {"payload": "{}"}, {"payload": None},
    {"payload": {}}, {"payload": {"x": 1e400}}, {"payload": {"x": -0.0, "y": 1e16}},
    {"prev_hash": None}, {"hash": None}, {"prev_hash": "zz"}, {"hash": "ABCD"}, {"prev_hash": 5},
    {"payload_omitted": True}, {"payload_omitted": False}, {"payload_omitted": 1}, {"extra": 1},
    {"stream": "inventory-\u00e9\U0001f600"}, {"idempotency_key": "k\u2028"},
])
def test_edge_values_are_decided_as_the_reference_decides_them(changes: dict[str, Any]) -> None:
    agree(edited(**changes))


@pytest.mark.parametrize("value", [
    None, b"", b"[]", b"{}", b"null", b'"x"', b"1", b"\xff", b"{" * 5000, b"[" * 5000 + b"]" * 5000,
    good()[:-1], good() + b"x", good().replace(b'"delta":-1', b'"delta":"\\ud800"'),
    good().replace(b'"delta":-1', b'"delta":"\\udc00x"'), good().replace(b'"delta":-1', b'"delta":"\\u00e9"'),
    good().replace(b'"agent"', b'"ag\x01ent"'), good().replace(b'"position":7', b'"position":7,"position":8'),
    good().replace(b'"delta":-1', b'"delta":-1,"delta":5'), good().replace(b'"delta":-1', b'"delta":NaN'),
    good().replace(b'"delta":-1', b'"delta":Infinity'), good().replace(b'"delta":-1', b'"delta":' + b"9" * 5000),
    good().replace(b"{", b"{ ", 1), good().replace(b'"payload":{', b'"payload": \n{'),
    good().replace(b'"hash":', b'"\x80x":1,"hash":'), good().replace(b'"hash":', b'"x\x80":"\xff","hash":'),
])
def test_hostile_bytes_are_decided_as_the_reference_decides_them(value: bytes | None) -> None:
    agree(value)


def test_a_stub_raises_payload_omitted_with_its_position() -> None:
    ev = event(position=41, payload={"text": "x" * 5000})
    stub = encode_recorded(ev, 2000)[2]
    with pytest.raises(PayloadOmitted) as got:
        decode_linked(stub)
    assert got.value.position == 41
    agree(stub)


_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)
_json: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | _text, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3), max_leaves=8)
_name = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20)
_stamp = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.dictionaries(_text, _json, max_size=4), stream=_name, agent=_name, key=_name, etype=_name,
       occurred=st.none() | _stamp, recorded=_stamp, lease=st.none() | _name,
       token=st.none() | st.integers(1, 2**63 - 1), position=st.integers(1, 2**63 - 1),
       same_correlation=st.booleans(), causation=st.booleans(), from_row=st.booleans())
def test_random_events_decode_and_chain_as_in_the_reference(
        payload: dict[str, Any], stream: str, agent: str, key: str, etype: str, occurred: datetime | None,
        recorded: datetime, lease: str | None, token: int | None, position: int, same_correlation: bool,
        causation: bool, from_row: bool) -> None:
    eid = uuid.uuid4()
    ev = event(position=position, payload=payload, stream=stream, agent_id=agent, idempotency_key=key, type=etype,
               occurred_at=occurred, recorded_at=recorded, lease_resource=lease, fencing_token=token,
               correlation_id=eid if same_correlation else uuid.uuid4(), event_id=eid,
               causation_id=uuid.uuid4() if causation else None, prev_hash=GENESIS)
    value = encode_row(row_of(ev))[2] if from_row else encode_recorded(ev)[2]
    assert b"\\u" in value or _decode_fast(value) is not None  # what a publisher writes takes the fast path
    got = agree(value)
    assert got is not None
    decoded, link = got
    assert link == decoded.hash  # a genuine message chains
    assert hashed_time(decoded.recorded_at) == hashed_time(ev.recorded_at)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_bytes_are_decided_as_the_reference_decides_them(data: st.DataObject) -> None:
    value = bytearray(good(causation_id=uuid.uuid4(), lease_resource="r", fencing_token=3))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(value) - 1))
        value[at:at + data.draw(st.integers(0, 3))] = data.draw(st.binary(max_size=3))
    agree(bytes(value))


# -- the payload hashed as received (decode_batch) ----------------------------------------------------
def relinked(value: bytes, payload_text: bytes) -> bytes:
    """``value`` with its payload replaced by ``payload_text`` and its hash recomputed over those bytes as
    they stand (what a forger who controls the topic can do; the projector hashes only canonical text)."""
    body = json.loads(value)
    intent = hashlib.sha256(f"{body['type']}\x00{body['schema_version']}\x00{body['stream']}\x00".encode()
                            + payload_text + b"\x00").digest()
    ev = decode_committed(value)
    link = chain_link(bytes.fromhex(body["prev_hash"]), ev.position, body["event_id"], ev.stream, ev.version,
                      ev.agent_id, ev.idempotency_key, body["correlation_id"], body["causation_id"] or "",
                      hashed_time(ev.occurred_at), hashed_time(ev.recorded_at), ev.lease_resource or "",
                      "" if ev.fencing_token is None else str(ev.fencing_token), intent)
    head, _, rest = value.partition(b'"payload":')
    _, _, tail = rest.partition(b',"agent_id":')
    out = head + b'"payload":' + payload_text + b',"agent_id":' + tail
    return out.replace(body["hash"].encode(), link.hex().encode())


def respelled(value: bytes, payload_text: bytes) -> bytes:
    """``value`` with its payload text replaced and its hash left as it was."""
    head, _, rest = value.partition(b'"payload":')
    _, _, tail = rest.partition(b',"agent_id":')
    return head + b'"payload":' + payload_text + b',"agent_id":' + tail


def test_both_publisher_paths_write_the_canonical_payload_text_the_chain_hashed() -> None:
    ev = event(payload={"z": 1, "a": [1.5, "\U0001f600", {"n": None}], "big": 10**30, "f": 1e16, "m": -0.0})
    canonical = canonical_json(ev.payload).encode()
    assert b'"payload":' + canonical + b',"agent_id"' in encode_row(row_of(ev))[2]
    assert b", " in json.dumps(ev.payload).encode()  # the row's payload text (jsonb's form) is not canonical
    (fast,), (link,) = decode_batch([encode_row(row_of(ev))[2]])
    assert fast == ev and link == ev.hash


@pytest.mark.parametrize("text", [
    b'{"sku": "A1", "delta": -1}', b'{"delta":-1,"sku":"A1"}', b'{ "delta" : -1 , "sku" : "A1" }',
    b'{"sku":"A1","delta":-1}', b'{"delta":-1,"sku":"\\u0041\\u0031"}',
])
def test_a_payload_spelled_otherwise_with_the_true_hash_verifies_through_the_fallback(text: bytes) -> None:
    value = respelled(good(), text)
    got = agree(value)
    assert got is not None and got[1] == got[0].hash  # chains, exactly as the reference says


@pytest.mark.parametrize("text", [
    b'{"delta":-1.0,"sku":"A1"}', b'{"delta":-1E0,"sku":"A1"}', b'{"delta":-10e-1,"sku":"A1"}',
    b'{"delta":-2,"sku":"A1"}', b'{"delta":-1,"sku":"A1","x":1}', b'{"delta":-1,"delta":-1,"sku":"A1"}',
])
def test_a_payload_with_other_values_and_the_old_hash_is_refused_as_in_the_reference(text: bytes) -> None:
    value = respelled(good(), text)
    got = agree(value)
    if text.count(b'"delta"') == 2:  # a duplicate key: both parsers keep the last, the same value
        assert got is not None and got[1] == got[0].hash
    else:
        assert got is not None and got[1] != got[0].hash


@pytest.mark.parametrize("text", [
    b'{"sku": "A1", "delta": -1}', b'{"sku":"A1","delta":-1}', b'{"delta":-1.0,"sku":"A1"}',
    b'{"delta":-1E0,"sku":"A1"}', b'{"delta":999,"sku":"A1"}',
])
def test_a_hash_forged_over_other_bytes_passes_only_the_message_check(text: bytes) -> None:
    """A forger may hash bytes that are not the canonical text: the message then chains by itself (the raw
    bytes are hashed first), where the reference recomputes the canonical text and refuses it one step
    earlier. It is never applied: its hash is not the log's, and the subscriber confirms every run's last
    hash against the log before applying it (tests/test_rebuild_raw_hash.py shows that with the servers)."""
    value = relinked(good(), text)
    ev, link = decode_linked(value)
    assert link == ev.hash and ev.payload == json.loads(text)
    ref_ev, ref_link = reference(value)
    assert ref_ev == ev
    assert ref_link != ev.hash or canonical_json(json.loads(text)).encode() == text


def test_decode_batch_gives_decode_linked_or_none_for_each_message() -> None:
    values: list[bytes | None] = [good(), None, b"{}", encode_recorded(event(payload={"t": "x" * 5000}), 2000)[2],
                                  respelled(good(), b'{"sku": "A1", "delta": -1}'), relinked(good(), b'{"a": 1}'),
                                  good().replace(b'"hash":', b'"\x80x":1,"hash":'), good(),
                                  good(recorded_at=datetime(2026, 11, 28, 10, 48, 25, tzinfo=UTC)),
                                  good(recorded_at=datetime(2026, 11, 28, 10, 48, 26, 5, tzinfo=UTC)), good()]
    events, links = decode_batch(values)  # a run of messages with one recorded_at reuses its parse
    assert len(events) == len(links) == len(values)
    assert [ev is None for ev in events] == [False, True, True, True, False, False, True, False, False, False,
                                             False]
    for value, ev, link in zip(values, events, links, strict=True):
        if ev is not None:
            assert value is not None and repr((ev, link)) == repr(decode_linked(value))
        else:
            assert link is None


@pytest.mark.parametrize("value", [None, b"", b"{", b'{"position": 1}', b"\xff\xfe"])
def test_reference_linked_refuses_what_the_reference_refuses(value: bytes | None) -> None:
    """The subscriber's fallback for values decode_batch declined: the reference alone, same errors."""
    with pytest.raises(DecodeError) as want:
        reference(value)
    with pytest.raises(type(want.value)) as got:
        reference_linked(value)
    assert str(got.value) == str(want.value)


def test_reference_linked_gives_the_reference_event_and_link() -> None:
    ev = event(lease_resource="inventory:A1", fencing_token=3)
    value = encode_recorded(ev)[2]
    assert repr(reference_linked(value)) == repr(reference(value)) == repr((ev, ev.hash))
