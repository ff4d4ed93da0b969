"""Canonical bytes and hashes of events and history rows (pure).

``intent_hash`` identifies what an idempotency key stands for (type, schema, stream, payload), so a
key reused for something else is told apart from a retry. ``chain_hash`` links each event to the
previous one, making the log tamper-evident. ``row_hash`` chains the side histories (outcomes, dead
letters) the same way; the database computes the same digest in a trigger (migration 0006).

Payloads are hashed as the database will return them: jsonb keeps numbers as ``numeric``, so a float
that Python prints with an exponent (``1e+16``) comes back as the integer ``10000000000000000`` and
``-0.0`` comes back as ``0.0``. ``canonical_json`` writes such numbers the way jsonb returns them,
so a payload hashes the same before the insert and after any number of round trips.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eventstore.core.records import RecordedEvent

GENESIS = bytes(32)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Python prints floats of magnitude >= 1e16 with an exponent; all of them are integral.
_EXPONENT_FROM = 1e16


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys, no spaces and numbers as jsonb returns them; equal data gives equal text,
    also after a jsonb round trip."""
    text = _encode(obj)
    if "e+" in text or "-0.0" in text:  # rare: only then walk the object (strings may match too: harmless)
        text = _encode(_as_jsonb_returns(obj))
    return text


# One encoder for all calls: json.dumps with non-default arguments builds a new encoder each time.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
# JSONEncoder.encode builds its C encoder anew on every call (half its cost for a small payload); this is
# the same C encoder with the same settings, built once. No circular-reference bookkeeping: what is hashed
# is JSON data (parsed, or a model's JSON-mode dump), which has no cycles (one would end in RecursionError).
_C_CANONICAL = None if c_make_encoder is None else c_make_encoder(
    None, _CANONICAL.default, encode_basestring, None, ":", ",", True, False, True)


def _encode(obj: Any) -> str:
    """``_CANONICAL.encode(obj)``, through the C encoder built once when the interpreter has it."""
    if _C_CANONICAL is None:
        return _CANONICAL.encode(obj)
    return "".join(_C_CANONICAL(obj, 0))


def _as_jsonb_returns(obj: Any) -> Any:
    if isinstance(obj, float):
        if obj == 0.0:
            return 0.0  # numeric has no negative zero
        if abs(obj) >= _EXPONENT_FROM and obj.is_integer():
            return int(Decimal(repr(obj)))  # the decimal the JSON text said, as numeric prints it
        return obj
    if isinstance(obj, dict):
        return {k: _as_jsonb_returns(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_as_jsonb_returns(v) for v in obj]
    return obj


def legacy_payload_texts(payload: Any) -> Iterator[str]:
    """Texts an event written before migration 0006 may have been hashed from, besides
    ``canonical_json`` (then floats like ``1e16`` were hashed as ``1e+16``): tried by ``verify`` only
    after the current form failed, so old logs keep verifying."""
    guessed = _ints_as_floats(payload)
    text = _CANONICAL.encode(guessed)
    if text != canonical_json(payload):
        yield text


def _ints_as_floats(obj: Any) -> Any:
    if isinstance(obj, int) and not isinstance(obj, bool) and abs(obj) >= _EXPONENT_FROM:
        f = float(obj)
        return f if int(Decimal(repr(f))) == obj else obj
    if isinstance(obj, dict):
        return {k: _ints_as_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_ints_as_floats(v) for v in obj]
    return obj


def intent_hash(event_type: str, schema_version: int, stream: str, payload_json: str) -> bytes:
    """sha256 over type, schema version, stream and canonical payload, each followed by a NUL byte."""
    return hashlib.sha256(f"{event_type}\x00{schema_version}\x00{stream}\x00{payload_json}\x00".encode()).digest()


def hashed_time(value: datetime | None) -> str:
    """A timestamp as the chain hashes it: UTC ISO 8601, "" when absent."""
    if value is None:
        return ""
    if value.tzinfo is UTC:  # already UTC (the decoders' "Z"): the same text without the conversion
        return value.isoformat()
    return value.astimezone(UTC).isoformat()


def chain_hash(
    prev: bytes,
    *,
    position: int,
    event_id: str,
    stream: str,
    version: int,
    agent_id: str,
    idempotency_key: str,
    correlation_id: str,
    causation_id: str | None,
    occurred_at: datetime | None,
    recorded_at: datetime,
    lease_resource: str | None,
    fencing_token: int | None,
    intent: bytes,
) -> bytes:
    """sha256 over the previous hash and every recorded field of the event."""
    return chain_link(prev, position, event_id, stream, version, agent_id, idempotency_key, correlation_id,
                      causation_id or "", hashed_time(occurred_at), hashed_time(recorded_at), lease_resource or "",
                      "" if fencing_token is None else str(fencing_token), intent)


def chain_link(prev: bytes, position: int, event_id: str, stream: str, version: int, agent_id: str,
               idempotency_key: str, correlation_id: str, causation_id: str, occurred_at: str, recorded_at: str,
               lease_resource: str, fencing_token: str, intent: bytes) -> bytes:
    """``chain_hash`` with every field already in its hashed text form (timestamps from :func:`_ts`, absent
    values as ""): sha256(prev || each field followed by a NUL byte || intent), built as one buffer so a
    batch pays one hash call per event. The projector's batch uses it with the recorded-at text computed
    once per batch."""
    text = (f"{position}\x00{event_id}\x00{stream}\x00{version}\x00{agent_id}\x00{idempotency_key}\x00"
            f"{correlation_id}\x00{causation_id}\x00{occurred_at}\x00{recorded_at}\x00{lease_resource}\x00"
            f"{fencing_token}\x00")
    return hashlib.sha256(b"".join((prev, text.encode(), intent))).digest()


# -- side histories (outcomes, dead letters) --------------------------------------------------------
RowField = str | bytes | None


def field_text(value: Any) -> RowField:
    """A column value as ``row_hash`` takes it, the way migration 0006's SQL renders it: text as is,
    bytea as bytes, numbers, booleans and uuids as their text, timestamps as microseconds since the epoch."""
    if value is None or isinstance(value, str | bytes):
        return value
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    if isinstance(value, datetime):
        return str((value - EPOCH) // _MICROSECOND)
    if isinstance(value, bool):  # as PostgreSQL's boolean::text (migration 0012's ``proven``)
        return "true" if value else "false"
    return str(value)


def row_hash(prev: bytes, fields: Sequence[RowField]) -> bytes:
    """sha256(prev || f1 || f2 ...) where f is 0x00 for NULL, else 0x01, the value's length (4 bytes,
    big-endian) and its bytes: prefix-free, so no two rows give the same input."""
    parts = [prev]
    for value in fields:
        if value is None:
            parts.append(b"\x00")
        else:
            raw = value if isinstance(value, bytes) else value.encode()
            parts.append(b"\x01" + len(raw).to_bytes(4, "big") + raw)
    return hashlib.sha256(b"".join(parts)).digest()


def recorded_hash(ev: RecordedEvent, prev: bytes) -> bytes:
    """The chain hash of a recorded event as received (e.g. from the committed topic), recomputed from
    its fields and payload: what a subscriber compares with the hash the message claims."""
    intent = intent_hash(ev.type, ev.schema_version, ev.stream, canonical_json(ev.payload))
    return chain_hash(prev, position=ev.position, event_id=str(ev.event_id), stream=ev.stream, version=ev.version,
                      agent_id=ev.agent_id, idempotency_key=ev.idempotency_key,
                      correlation_id=str(ev.correlation_id),
                      causation_id=None if ev.causation_id is None else str(ev.causation_id),
                      occurred_at=ev.occurred_at, recorded_at=ev.recorded_at, lease_resource=ev.lease_resource,
                      fencing_token=ev.fencing_token, intent=intent)
