"""The projector's one-pass decoder (``decode_intake``, issue 11) accepts exactly what the pydantic
``decode`` accepts, with the same field values, and refuses with decode's reasons (no servers)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore.core.auth import Credential, sign, split_signed, split_signed_as
from eventstore.core.errors import DecodeError
from eventstore.core.events import registry
from eventstore.core.hashing import hashed_time
from eventstore.core.records import EnvelopeFields
from eventstore.postgres.intake import read_message
from eventstore.postgres.intakebatch import IntakeMessage, Parsed
from eventstore.wire.envelope import IntakeEnvelope, decode, decode_intake
from tests.test_hostile_parse import HOSTILE, good_envelope, hostile_envelopes, variant

FIELDS = ("event_id", "idempotency_key", "stream", "expected_version", "agent_id", "correlation_id",
          "causation_id", "type", "schema_version")


def same(fast: EnvelopeFields, slow: EnvelopeFields) -> None:
    for name in FIELDS:
        assert getattr(fast, name) == getattr(slow, name), name
    a, b = fast.occurred_at, slow.occurred_at
    assert (a is None) == (b is None)
    if a is not None and b is not None:  # wall time and offset: an out-of-range instant cannot be compared
        assert (a.replace(tzinfo=None), a.utcoffset()) == (b.replace(tzinfo=None), b.utcoffset())
        if 1 < a.year < 9999:
            assert hashed_time(a) == hashed_time(b)
    assert (fast.lease is None) == (slow.lease is None)
    if fast.lease is not None and slow.lease is not None:
        assert (fast.lease.resource, fast.lease.token) == (slow.lease.resource, slow.lease.token)


def agree(value: bytes | None) -> None:
    try:
        slow = decode(value)
    except DecodeError as e:
        with pytest.raises(DecodeError) as got:
            decode_intake(value)
        assert str(got.value) == str(e)
        return
    fast, payload = decode_intake(value)
    same(fast, slow)
    assert payload == slow.payload


def test_an_sdk_envelope_takes_the_fast_path_with_the_same_fields() -> None:
    value = variant(lease={"resource": "r-1", "token": 3}, expected_version=4,
                    causation_id=str(uuid.uuid4()), occurred_at="2026-01-02T03:04:05.123456+05:30")
    fast, payload = decode_intake(value)
    assert isinstance(fast, IntakeEnvelope)
    same(fast, decode(value))
    assert payload == {"sku": "H1", "quantity": 1}


@pytest.mark.parametrize("changes", [
    {"occurred_at": "2026-01-02T03:04:05"},  # naive: Envelope wants an aware timestamp
    {"expected_version": 1.0}, {"expected_version": "3"}, {"schema_version": True},
    {"event_id": "{12345678-1234-1234-1234-123456789abc}"},
    {"event_id": "urn:uuid:12345678-1234-1234-1234-123456789abc"},
    {"event_id": "12345678123412341234123456789ABC"}, {"stream": "inventory-H1\n"}, {"type": ""},
    {"idempotency_key": "k" * 201}, {"payload": []}, {"payload": "{}"}, {"payload": None},
    {"lease": {"resource": "r", "token": 0}}, {"lease": {"resource": "r", "token": 1, "x": 1}},
    {"auth": {"key_id": "0123456789abcdeF", "mac": "x" * 43}},
    {"auth": {"key_id": "0123456789abcdef", "mac": "x" * 43}},
    {"occurred_at": "2026-01-02 03:04:05Z"}, {"occurred_at": 1_700_000_000}, {"extra": 1},
    {"occurred_at": "2026-01-02T03:04:05.1234567Z"}, {"occurred_at": "2026-12-31T23:59:59.9999999Z"},
    {"occurred_at": "2026-01-02T03:04:05,5Z"}, {"occurred_at": "2026-01-02T03:04:60Z"},
    {"occurred_at": "2026-01-02T03:04:05-00:00"}, {"occurred_at": "2026-01-02t03:04:05z"},
    {"occurred_at": "2026-01-02T03:04Z"}, {"occurred_at": "20260102T030405Z"}, {"occurred_at": "2026-01-02"},
])
def test_edge_values_are_decided_as_decode_decides_them(changes: dict[str, Any]) -> None:
    agree(variant(**changes))


@pytest.mark.parametrize("value", [h[1] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_each_hostile_message_is_decided_as_decode_decides_it(value: bytes | None) -> None:
    agree(value)


def test_duplicate_members_take_the_last_value_in_both() -> None:
    env = good_envelope()
    body = json.dumps(env)
    agree((body[:-1] + ', "stream": "inventory-H2"}').encode())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_envelopes())
def test_hostile_envelopes_are_decided_as_decode_decides_them(case: tuple[bytes, bytes | None]) -> None:
    agree(case[0])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=500))
def test_arbitrary_bytes_are_decided_as_decode_decides_them(value: bytes) -> None:
    agree(value)


@pytest.mark.parametrize("stamp", [b"2024-01-01T23:59:59.999999\\u0039Z", b"2024-01-01T00:00:00\\u002e1234567Z",
                                   b"2024-01-01T00:00:00.1234567\\u005a"])
def test_a_timestamp_spelled_with_escapes_gets_the_instant_decode_gives(stamp: bytes) -> None:
    """Found in review: escapes hid a seventh fractional digit from the fast path's pattern, and msgspec
    rounded it to the next day where decode() truncates."""
    value = variant(occurred_at="STAMP").replace(b"STAMP", stamp)
    agree(value)
    slow = decode(value)
    fast, _ = decode_intake(value)
    assert fast.occurred_at == slow.occurred_at


@pytest.mark.parametrize("depth", [1, 2, 61, 62, 63, 64, 100, 999, 1000, 1001, 100_000])
@pytest.mark.parametrize("lease", [None, {"resource": "r", "token": 1}])
def test_nesting_is_limited_as_decode_limits_it(depth: int, lease: dict[str, Any] | None) -> None:
    """The fast path counts the payload's nesting after msgspec (the envelope adds one level; a lease or an
    auth member adds none beyond two): a payload at the limit passes, one level more is refused with
    decode's text, and a nesting past msgspec's recursion limit is refused the same way."""
    inner = "[" * depth + "]" * depth  # the value nests depth + 2 levels: the envelope, the payload, the lists
    value = variant(lease=lease, payload={"deep": "X", "sku": "H1"}).replace(b'"X"', inner.encode(), 1)
    agree(value)
    if depth + 2 <= 64:
        fast, _ = decode_intake(value)
        assert isinstance(fast, IntakeEnvelope)  # taken by the fast path, not the fallback
    else:
        with pytest.raises(DecodeError, match="levels deep"):
            decode_intake(value)


@pytest.mark.parametrize("text", ['"\\u0041"', '"a\\"b"', '"\\\\"', '"[[[\\u005b"', '"\\ud83d\\ude00"'])
def test_escaped_strings_are_decided_as_decode_decides_them(text: str) -> None:
    """Escapes (the fast path's memchr for a backslash sends them to the exact tests) in names and payloads."""
    agree(variant(payload={"s": "X"}).replace(b'"X"', text.encode(), 1))
    agree(variant(stream="PLACEHOLDER").replace(b'"PLACEHOLDER"', text.encode(), 1))


_CREDENTIAL = Credential("0123456789abcdef", bytes(range(32)))


@st.composite
def signed_values(draw: st.DrawFn) -> bytes:
    """Signed envelopes, some with their auth member respelled, moved, repeated or followed by bytes."""
    body = json.dumps(good_envelope(), separators=draw(st.sampled_from([(",", ":"), (", ", ": ")]))).encode()
    value = sign(body, _CREDENTIAL)
    change = draw(st.integers(min_value=0, max_value=6))
    if change == 1:
        value += draw(st.sampled_from([b" ", b"\n", b"\t\r\n ", b"\x0b", b"\x0c", b"x"]))
    elif change == 2:  # spaces inside the auth member
        value = value.replace(b'","mac":"', b'", "mac": "')
    elif change == 3:  # another auth member before the last one (duplicate keys: the last one counts)
        value = value.replace(b'{"event_id"', b'{"auth":{"key_id":"fedcba9876543210","mac":"' + b"A" * 43 +
                              b'"},"event_id"', 1)
    elif change == 4:  # a key id or MAC escaped, upper case or cut short
        old = value[value.rindex(b'"key_id":"') + 10:][:16]
        value = value.replace(old, draw(st.sampled_from([b"\\u0030" + old[1:], old.upper(), old[:15]])))
    elif change == 5:  # the auth member not last
        value = value[:-1] + b',"z":1}'
    elif change == 6:  # a MAC that is not the one the body gives
        value = value[:-4] + (b"A" if value[-4:-3] != b"A" else b"B") + value[-3:]
    return value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(signed_values())
def test_the_signed_part_is_cut_as_split_signed_cuts_it(value: bytes) -> None:
    """parse() cuts the signed part with split_signed_as when the fast decoder read the auth member: the same
    Signed (or None) as the regex of split_signed, for every spelling; and the projector's candidate carries it."""
    agree(value)
    expected = split_signed(value)
    try:
        env, _ = decode_intake(value)
    except DecodeError:
        return
    if isinstance(env, IntakeEnvelope) and env.auth is not None:
        assert split_signed_as(value, env.auth.key_id, env.auth.mac) == expected
    got = read_message(IntakeMessage(0, 0, env.stream.encode(), value), registry)
    if isinstance(got, Parsed):
        assert got.signed == expected
