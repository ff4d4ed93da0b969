"""The one-buffer hashes (issue 11) give the same digests as the field-by-field form they replaced, so logs
written before keep verifying. The reference below is the earlier implementation, kept as the spec."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore.core.hashing import (
    _CANONICAL,
    _encode,
    canonical_json,
    chain_hash,
    chain_link,
    hashed_time,
    intent_hash,
)


def reference_intent(event_type: str, schema_version: int, stream: str, payload_json: str) -> bytes:
    h = hashlib.sha256()
    for part in (event_type, str(schema_version), stream, payload_json):
        h.update(part.encode())
        h.update(b"\x00")
    return h.digest()


def reference_chain(prev: bytes, fields: tuple[str, ...], intent: bytes) -> bytes:
    h = hashlib.sha256(prev)
    for part in fields:
        h.update(part.encode())
        h.update(b"\x00")
    h.update(intent)
    return h.digest()


text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
stamps = st.one_of(st.none(), st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                                                                     timezone(timedelta(hours=-9))]),
                                           min_value=datetime(2, 1, 1), max_value=datetime(9998, 1, 1)))


@settings(max_examples=300, deadline=None)
@given(text, st.integers(1, 2**31 - 1), text, text)
def test_intent_hash_is_the_field_by_field_digest(event_type: str, version: int, stream: str, payload: str) -> None:
    assert intent_hash(event_type, version, stream, payload) == reference_intent(event_type, version, stream, payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(1, 2**63 - 1), st.uuids(), text, st.integers(1, 2**63 - 1),
       text, text, st.uuids(), st.one_of(st.none(), st.uuids()), stamps, stamps.filter(lambda s: s is not None),
       st.one_of(st.none(), text), st.one_of(st.none(), st.integers(1, 2**63 - 1)), st.binary(min_size=32,
                                                                                              max_size=32))
def test_chain_hash_and_chain_link_are_the_field_by_field_digest(
        prev: bytes, position: int, event_id: object, stream: str, version: int, agent: str, key: str,
        correlation: object, causation: object | None, occurred: datetime | None, recorded: datetime | None,
        lease: str | None, token: int | None, intent: bytes) -> None:
    assert recorded is not None
    fields = (str(position), str(event_id), stream, str(version), agent, key, str(correlation),
              "" if causation is None else str(causation),
              "" if occurred is None else occurred.astimezone(UTC).isoformat(), recorded.astimezone(UTC).isoformat(),
              lease or "", "" if token is None else str(token))
    want = reference_chain(prev, fields, intent)
    assert chain_hash(prev, position=position, event_id=str(event_id), stream=stream, version=version, agent_id=agent,
                      idempotency_key=key, correlation_id=str(correlation),
                      causation_id=None if causation is None else str(causation), occurred_at=occurred,
                      recorded_at=recorded, lease_resource=lease, fencing_token=token, intent=intent) == want
    assert chain_link(prev, position, str(event_id), stream, version, agent, key, str(correlation), fields[7],
                      hashed_time(occurred), hashed_time(recorded), lease or "", fields[11], intent) == want


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80), st.floats(),
                      st.text(max_size=20))
json_data = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                         max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(json_data)
def test_the_encoder_built_once_writes_what_json_writes(value: object) -> None:
    """Same text as the JSONEncoder it replaces (sorted keys, no spaces, no ASCII escaping, NaN as NaN)."""
    assert _encode(value) == _CANONICAL.encode(value)
    assert canonical_json(value) == canonical_json(value)  # and stable
