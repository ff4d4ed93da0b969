"""Any bytes through the projector's per-message path (issue 8, items 1 and 5), without servers:
the boundary turns whatever a message makes the code raise into a dead-letter reason, the limits
refuse what parsers or PostgreSQL would choke on, and the SQLSTATE table decides on purpose."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore.core.events import registry
from eventstore.core.limits import MAX_JSON_DEPTH, json_depth, offset_problem
from eventstore.examples.inventory import InventoryUpdated, stream_for
from eventstore.postgres.connection import Disposition, disposition
from eventstore.postgres.intake import read_message
from eventstore.postgres.intakebatch import IntakeMessage, Parsed
from eventstore.sdk.client import build_envelope
from eventstore.wire.committed import PayloadOmitted, decode_committed, encode_committed
from eventstore.wire.envelope import encode, salvage_ids


def good_envelope(sku: str = "H1") -> dict[str, Any]:
    env = build_envelope("agent-h", InventoryUpdated(sku=sku, quantity=1), stream_for(sku), expected_version=None,
                         idempotency_key=None, correlation_id=None, causation_id=None, lease=None)
    parsed: dict[str, Any] = json.loads(encode(env)[1])
    return parsed


def message(value: bytes | None, key: bytes | None = b"inventory-H1", offset: int = 0) -> IntakeMessage:
    return IntakeMessage(0, offset, key, value)


def variant(**changes: Any) -> bytes:
    env = good_envelope()
    env.update({"event_id": str(uuid.uuid4()), **changes})
    return json.dumps(env).encode()


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


# Each hostile message of issue 8 (and a few more), with a word its dead-letter reason must contain.
HOSTILE: list[tuple[str, bytes | None, bytes | None, str]] = [
    ("empty array", b"[]", b"inventory-H1", "not a valid envelope"),
    ("a string", b'"x"', b"inventory-H1", "not a valid envelope"),
    ("a number", b"1", b"inventory-H1", "not a valid envelope"),
    ("null", b"null", b"inventory-H1", "not a valid envelope"),
    ("5,000 levels of arrays", deep(5000).encode(), b"inventory-H1", "nested 5000 levels"),
    ("deep payload", variant(payload={"sku": "H1", "quantity": 1, "x": json.loads(deep(900))}),
     b"inventory-H1", "nested"),
    ("occurred_at overflows UTC", variant(occurred_at="0001-01-01T00:00:00+14:00"), b"inventory-H1", "occurred_at"),
    ("expected_version beyond bigint", variant(expected_version=2**70), b"inventory-H1", "expected_version"),
    ("5,000-digit number", variant(payload={"sku": "H1", "quantity": int("9" * 4000)}).replace(
        b"9" * 4000, b"9" * 5000), b"inventory-H1", "number out of range"),
    ("1e400", variant(payload={"sku": "H1", "quantity": 1}).replace(b'"quantity": 1', b'"quantity": 1e400'),
     b"inventory-H1", "quantity"),
    ("lone surrogate in payload key", variant().replace(b'"sku": "H1"', b'"sku": "H1", "\\ud800": 1'),
     b"inventory-H1", ""),
    ("lone surrogate in stream", variant(stream="inventory-\ud800").replace(b"\\ud800", b"\\udc00"),
     b"inventory-\xed\xb0\x80", ""),
    ("lone surrogate in agent_id and key", variant(agent_id="a\udc00", idempotency_key="k\udc00"), b"inventory-H1",
     "surrogate"),
    ("key disagrees with stream", variant(), b"inventory-OTHER", "inventory-OTHER"),
    ("no key", variant(), None, "no key"),
    ("control char in stream", variant(stream="inventory-\x07"), b"inventory-\x07", "control"),
    ("event_id of a wrong type", variant(event_id=5), b"inventory-H1", "event_id"),
    ("extra field", variant(extra=1), b"inventory-H1", "extra"),
    ("huge string", variant(payload={"sku": "H1" * 300_000, "quantity": 1}), b"inventory-H1", "sku"),
    ("not UTF-8", b"\xff\xfe{}", b"inventory-H1", "not a valid envelope"),
    ("tombstone", None, b"inventory-H1", "no value"),
    ("reserved stream", variant(stream="ops-offsets"), b"ops-offsets", "reserved"),
]


@pytest.mark.parametrize(("name", "value", "key", "word"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_each_hostile_message_becomes_a_dead_letter_reason(name: str, value: bytes | None, key: bytes | None,
                                                           word: str) -> None:
    got = read_message(message(value, key), registry)
    assert isinstance(got, str), f"{name} was accepted"
    assert word in got
    got.encode("utf-8")  # storable as PostgreSQL text: no lone surrogates left
    assert "\x00" not in got and len(got) <= 2003
    salvage_ids(value)  # never raises, whatever the bytes


def test_a_good_envelope_passes_and_oversize_is_refused() -> None:
    good = variant()
    assert isinstance(read_message(message(good), registry), Parsed)
    got = read_message(message(good), registry, max_event_bytes=len(good) - 1)
    assert isinstance(got, str) and f"{len(good):,} bytes" in got and "EVENTSTORE_MAX_EVENT_BYTES" in got


def test_an_unexpected_exception_becomes_a_dead_letter_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The boundary: a bug the bytes trigger (here a simulated AttributeError) never escapes."""
    import eventstore.postgres.intake as intake

    def broken(*_a: Any, **_k: Any) -> Any:
        raise AttributeError("'list' object has no attribute 'get'")

    monkeypatch.setattr(intake, "canonical_json", broken)
    got = read_message(message(variant()), registry)
    assert isinstance(got, str) and got.startswith("unexpected AttributeError") and "no attribute 'get'" in got


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=2000), st.none()), st.one_of(st.binary(max_size=50), st.none()))
def test_arbitrary_bytes_never_raise(value: bytes | None, key: bytes | None) -> None:
    got = read_message(message(value, key), registry)
    assert isinstance(got, str) and got  # random bytes are never a valid envelope
    got.encode("utf-8")


json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30),
    st.sampled_from(["\ud800", "\x00", "\x1b[31m", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]),
)
# Two levels of containers, built by hand (bounded, and without st.recursive's self-checks).
_level1 = st.one_of(json_leaf, st.lists(json_leaf, max_size=4),
                    st.dictionaries(st.text(max_size=8), json_leaf, max_size=4))
json_values = st.one_of(_level1, st.lists(_level1, max_size=3), st.dictionaries(st.text(max_size=8), _level1,
                                                                                  max_size=3))
FIELDS = ["event_id", "idempotency_key", "stream", "expected_version", "agent_id", "correlation_id",
          "causation_id", "occurred_at", "type", "schema_version", "payload", "lease", "extra"]


@st.composite
def hostile_envelopes(draw: st.DrawFn) -> tuple[bytes, bytes | None]:
    """A valid envelope with some fields replaced by hostile values, or wrapped in deep nesting."""
    env = good_envelope()
    env["event_id"] = str(uuid.uuid4())
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        env[name] = draw(json_values)
    if draw(st.booleans()):
        env["payload"] = {"sku": "H1", "quantity": draw(st.one_of(st.integers(), json_values))}
    raw = json.dumps(env).encode()
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        levels = draw(st.integers(min_value=50, max_value=3000))
        raw = b"[" * levels + raw + b"]" * levels
    key = draw(st.one_of(st.just(str(env.get("stream")).encode("utf-8", "surrogatepass")), st.none(),
                         st.binary(max_size=20)))
    return raw, key


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_envelopes())
def test_hostile_envelopes_never_raise(case: tuple[bytes, bytes | None]) -> None:
    raw, key = case
    got = read_message(message(raw, key), registry)
    if isinstance(got, str):
        assert got
        got.encode("utf-8")
    else:  # accepted: everything in it can be stored and hashed
        got.payload_json.encode("utf-8")
        assert key == got.envelope.stream.encode()
    salvage_ids(raw)


def test_json_depth_ignores_brackets_in_strings() -> None:
    assert json_depth(b'{"a": "' + b"[" * 500 + b'"}') <= MAX_JSON_DEPTH
    assert json_depth(deep(200).encode()) == 200
    assert json_depth(b'["\\"[[[[", ' + deep(100).encode() + b"]") == 101


def test_salvage_ids_of_non_objects_and_deep_json() -> None:
    for raw in (b"[]", b'"x"', b"1", b"null", deep(100_000).encode(), b"", b"\xff"):
        assert salvage_ids(raw) is None
    env = good_envelope()
    assert salvage_ids(json.dumps(env).encode()) == (uuid.UUID(env["event_id"]), "agent-h", env["idempotency_key"])


@pytest.mark.parametrize(("sqlstate", "constraint", "lost", "expected"), [
    ("40001", None, False, Disposition.RETRY), ("40P01", None, False, Disposition.RETRY),
    ("55P03", None, False, Disposition.RETRY), ("08006", None, False, Disposition.RETRY),
    ("08001", None, False, Disposition.RETRY), ("57P01", None, False, Disposition.RETRY),
    ("57P02", None, False, Disposition.RETRY), ("57P03", None, False, Disposition.RETRY),
    ("53300", None, False, Disposition.RETRY), (None, None, True, Disposition.RETRY),
    ("23505", "events_agent_key_key", False, Disposition.RETRY),
    ("23505", "other_key", False, Disposition.DEAD_LETTER), ("23502", None, False, Disposition.DEAD_LETTER),
    ("22003", None, False, Disposition.DEAD_LETTER), ("22P05", None, False, Disposition.DEAD_LETTER),
    ("54000", None, False, Disposition.DEAD_LETTER),
    ("53100", None, False, Disposition.STOP), ("42501", None, False, Disposition.STOP),
    ("3D000", None, False, Disposition.STOP), ("28P01", None, False, Disposition.STOP),
    ("XX000", None, False, Disposition.STOP), ("42P01", None, False, Disposition.STOP),
    (None, None, False, Disposition.STOP),
])
def test_sqlstate_table(sqlstate: str | None, constraint: str | None, lost: bool, expected: Disposition) -> None:
    assert disposition(sqlstate, constraint=constraint, connection_lost=lost) is expected


def test_offset_problem_names_topic_partition_both_offsets_and_the_command() -> None:
    assert offset_problem("ns.intake", 2, 10, 0, 10) is None
    assert offset_problem("ns.intake", 2, 10, 5, 20) is None
    assert offset_problem("ns.intake", 2, 10, -1, -1) is None
    ahead = offset_problem("ns.intake", 2, 10, 0, 4)
    assert ahead is not None and all(s in ahead for s in ("ns.intake[2]", "10", "4", "recreated",
                                                          "eventstore offsets reset"))
    behind = offset_problem("ns.intake", 3, 10, 15, 20)
    assert behind is not None and all(s in behind for s in ("ns.intake[3]", "10", "15", "deleted",
                                                            "eventstore offsets reset"))


def test_committed_messages_are_utf8_and_a_too_large_one_becomes_a_stub() -> None:
    from datetime import UTC, datetime

    from eventstore.core.records import RecordedEvent

    eid = uuid.uuid4()
    ev = RecordedEvent(position=7, event_id=eid, stream="s", version=1, type="T", schema_version=1,
                       payload={"text": "\U0001f600" * 1000}, agent_id="a", idempotency_key="k",
                       correlation_id=eid, causation_id=None, occurred_at=None, recorded_at=datetime.now(UTC))
    _, value, _ = encode_committed(ev)
    assert "\U0001f600".encode() in value and len(value) < 4 * 1000 + 600  # 4 bytes an emoji, not 12
    assert decode_committed(value) == ev
    _, stub, _ = encode_committed(ev, max_bytes=2000)
    assert len(stub) < 400
    with pytest.raises(PayloadOmitted) as caught:
        decode_committed(stub)
    assert caught.value.position == 7
