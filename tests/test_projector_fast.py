"""The projector's cheaper per-event paths give exactly what the paths they replace gave (no servers):
the batch signature check (precomputed HMAC pads) against ``auth.authenticate``, the notification rows
against ``JSONEncoder.encode`` of ``EmitResult.to_wire``, and a committed message from the append's
printed texts against one encoded from the event's fields."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore.core.auth import AgentKey, Credential, Signed, authenticate, sign, split_signed
from eventstore.core.decisions import _Verifier
from eventstore.core.hashing import canonical_json, hashed_time
from eventstore.core.outcomes import EmitResult, Outcome, ReasonCode
from eventstore.core.records import RecordedEvent
from eventstore.wire.committed import PRINTED, decode_committed, encode_recorded
from eventstore.wire.notifications import MAX_PAYLOAD, pack, pack_rows, unpack

SECRET, OTHER = bytes(range(32)), bytes(range(1, 33))
KEYS = {
    "0123456789abcdef": AgentKey("0123456789abcdef", "alice", SECRET, "active"),
    "fedcba9876543210": AgentKey("fedcba9876543210", "alice", OTHER, "revoked"),
    "00000000000000ff": AgentKey("00000000000000ff", "bob", OTHER, "active"),
}


def _signed(key_id: str, secret: bytes, body: bytes = b'{"agent_id":"alice","x":1}') -> Signed | None:
    return split_signed(sign(body, Credential(key_id, secret)))


def test_the_batch_verifier_accepts_exactly_what_authenticate_accepts() -> None:
    verifier = _Verifier(KEYS)
    good = _signed("0123456789abcdef", SECRET)
    cases: list[tuple[str, Signed | None]] = [
        ("alice", good),
        ("bob", good),  # another agent's credential
        ("alice", _signed("0123456789abcdef", OTHER)),  # wrong key: bad MAC
        ("alice", _signed("fedcba9876543210", OTHER)),  # revoked
        ("alice", _signed("1111111111111111", SECRET)),  # unknown
        ("bob", _signed("00000000000000ff", OTHER)),
        ("alice", None),
    ]
    assert good is not None
    cases.append(("alice", Signed(good.body + b" ", good.key_id, good.mac)))  # body changed after signing
    cases.append(("alice", Signed(good.body, good.key_id, good.mac[:-1] + ("A" if good.mac[-1] != "A" else "B"))))
    for _ in range(2):  # the second pass uses the pads cached by the first
        for agent, signed in cases:
            assert verifier.valid(agent, signed) is (authenticate(agent, signed, KEYS) is None), (agent, signed)


_PREVIOUS = json.JSONEncoder(separators=(",", ":"))


def _previous_pack(results: list[EmitResult]) -> list[str]:
    """pack() as it was: JSONEncoder.encode per result, byte lengths measured by encoding."""
    chunks: list[str] = []
    current: list[str] = []
    size = 2
    for r in results:
        item = _PREVIOUS.encode(r.to_wire())
        if len(item.encode()) + 2 > MAX_PAYLOAD:
            r = dataclasses.replace(r, reason=(r.reason or "")[:1000])
            item = _PREVIOUS.encode(r.to_wire())
        if current and size + len(item.encode()) + 1 > MAX_PAYLOAD:
            chunks.append("[" + ",".join(current) + "]")
            current, size = [], 2
        current.append(item)
        size += len(item.encode()) + 1
    if current:
        chunks.append("[" + ",".join(current) + "]")
    return chunks


_results = st.builds(
    EmitResult, st.uuids(), st.sampled_from(list(Outcome)), st.none() | st.text(max_size=40),
    st.none() | st.integers(0, 2**63 - 1), st.none() | st.integers(0, 2**63 - 1), st.none() | st.integers(0, 2**40),
    st.none() | st.text(max_size=50) | st.text(min_size=7000, max_size=9000),
    st.none() | st.sampled_from(list(ReasonCode)))


@settings(max_examples=150, deadline=None)
@given(st.lists(_results, max_size=60))
def test_notification_chunks_are_the_bytes_they_were(results: list[EmitResult]) -> None:
    chunks = pack(results)
    assert chunks == _previous_pack(results) == pack_rows([r.to_wire() for r in results])
    assert all(len(c.encode()) < MAX_PAYLOAD for c in chunks)
    assert len([r for c in chunks for r in unpack(c)]) == len(results)


def _event(payload: dict[str, Any], occurred: datetime | None, causation: uuid.UUID | None,
           correlation: uuid.UUID | None, micro: int) -> RecordedEvent:
    event_id = uuid.uuid4()
    return RecordedEvent(
        position=7, event_id=event_id, stream="s \"q\" ✓", version=3, type="T", schema_version=2, payload=payload,
        agent_id="a\\b", idempotency_key="k\u2028", correlation_id=correlation or event_id, causation_id=causation,
        occurred_at=occurred, recorded_at=datetime(2026, 11, 28, 10, 0, 0, micro, tzinfo=UTC),
        lease_resource="r" if causation else None, fencing_token=9 if causation else None,
        prev_hash=bytes(32), hash=bytes(range(32)))


_json = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False,
                     allow_infinity=False) | st.text(max_size=10),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                     max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(payload=st.dictionaries(st.text(max_size=8), _json, max_size=4), micro=st.integers(0, 999_999),
       occurred=st.none() | st.datetimes(timezones=st.just(timezone(timedelta(hours=-5)))),
       causation=st.none() | st.uuids(), correlation=st.none() | st.uuids())
def test_a_message_from_printed_texts_decodes_as_one_from_the_fields(
        payload: dict[str, Any], micro: int, occurred: datetime | None, causation: uuid.UUID | None,
        correlation: uuid.UUID | None) -> None:
    ev = _event(payload, occurred, causation, correlation, micro)
    plain = encode_recorded(ev)
    ev.__dict__[PRINTED] = (str(ev.event_id), str(ev.correlation_id), "" if causation is None else str(causation),
                            hashed_time(ev.occurred_at), hashed_time(ev.recorded_at), canonical_json(payload))
    fast = encode_recorded(ev)
    assert fast[0] == plain[0] and fast[1] == plain[1] and fast[3] == plain[3] and fast[4] == plain[4]
    assert decode_committed(fast[2]) == decode_committed(plain[2])
    assert json.loads(fast[2]) == json.loads(plain[2])  # the same values, the payload's numbers included
    assert dataclasses.replace(ev).__dict__.get(PRINTED) is None  # a changed copy never carries stale texts


def test_the_parts_benchmark_runs_and_checks_its_baseline(capsys: Any) -> None:
    from eventstore.bench import projectorparts
    assert projectorparts.main(40) == 0
    out = capsys.readouterr().out
    assert "together" in out and "load average" in out


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_names_refused_exactly_when_they_hold_control_characters(name: str) -> None:
    """check_name's fast accept (printable ASCII) refuses exactly what the control-character regex finds."""
    from eventstore.core.errors import InvalidEventError
    from eventstore.core.validation import CONTROL_CHARS, check_name

    try:
        check_name("stream", name)
        refused = False
    except InvalidEventError:
        refused = True
    assert refused == (CONTROL_CHARS.search(name) is not None)
