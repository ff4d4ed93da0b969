"""The committed-event wire format (pure): what the publisher writes to ``<ns>.committed``.

Key: the stream. Value: the recorded event as JSON, including ``position`` (global, gapless) and
``version`` (per stream), and the event's chain link ``prev_hash`` and ``hash`` (hex), so that a
subscriber can check that a message chains onto the last event it applied and that its fields
recompute to its hash. Headers repeat position, version and type. A subscriber recognises a
republished event by its position.

The value is UTF-8 JSON (non-ASCII text is not escaped: an escaped emoji takes 12 bytes instead of 4).
A value larger than the committed limit (``EVENTSTORE_MAX_COMMITTED_BYTES``) is replaced by a stub
carrying position, stream, version, type and ``"payload_omitted": true``; :func:`decode_committed`
raises :class:`PayloadOmitted` for it and a subscriber reads that event from PostgreSQL by position.
The publisher therefore never meets a message the broker refuses for its size.

Each message is encoded once, from what the publisher holds: the events its own projector just committed
(:func:`encode_recorded`) or rows read from the log already in text form (:func:`encode_row`, with
:data:`COMMITTED_ROW`); both give the same fields and values, timestamps in UTC (``Z``).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pydantic_core

from eventstore.core.errors import DecodeError
from eventstore.core.hashing import _as_jsonb_returns as as_jsonb_returns
from eventstore.core.hashing import canonical_json, hashed_time, recorded_hash
from eventstore.core.limits import DEFAULT_MAX_COMMITTED_BYTES
from eventstore.core.records import RecordedEvent
from eventstore.wire.committedschema import WireCommitted
from eventstore.wire.envelope import Headers

FORMAT = "eventstore.committed/1"
# (position, key, value, headers, whether the value is a stub)
Encoded = tuple[int, bytes, bytes, Headers, bool]
_quote = json.encoder.encode_basestring  # the C encoder: a JSON string with its quotes, non-ASCII kept
_ZERO = timedelta(0)
_to_json = pydantic_core.to_json  # compact UTF-8 JSON, non-ASCII kept; ~7x faster than json.dumps here


class PayloadOmitted(DecodeError):
    """A committed-topic stub for an event too large for the topic: read it from the log by position."""

    def __init__(self, position: int) -> None:
        self.position = position
        super().__init__(f"event at position {position} was too large for the committed topic; "
                         "read it from the event log")


def encode_committed(ev: RecordedEvent, max_bytes: int = DEFAULT_MAX_COMMITTED_BYTES) -> tuple[bytes, bytes, Headers]:
    """(key, value, headers) of a committed event; a stub when the value would exceed ``max_bytes``."""
    _, key, value, headers, _ = encode_recorded(ev, max_bytes)
    return key, value, headers


# The texts the projector's append printed for the hash chain, kept on each RecordedEvent it returns (in the
# instance's __dict__ under PRINTED, not a dataclass field: equality, repr and dataclasses.replace ignore
# it): event id, correlation id, causation id ("" for none), occurred-at and recorded-at as the chain hashes
# them (UTC ISO 8601, "" for none), and the payload's canonical JSON (numbers as jsonb returns them).
PRINTED = "_es_printed"
CommittedTexts = tuple[str, str, str, str, str, str]
_UTC_SUFFIX = "+00:00"


def _z(text: str) -> str:
    """A hashed UTC timestamp ("...+00:00") in the committed topic's form ("...Z")."""
    return text[:-6] + "Z" if text.endswith(_UTC_SUFFIX) else text


def encode_recorded(ev: RecordedEvent, max_bytes: int = DEFAULT_MAX_COMMITTED_BYTES) -> Encoded:
    """(position, key, value, headers, stub?) of an event the caller holds in memory (the publisher's
    hand-off). An event fresh from the projector's append carries the texts the chain hashed (``PRINTED``)
    and goes through the same f-string encoder as a row read from the log; any other event is one dict
    serialised in one call of pydantic_core's Rust encoder (UUIDs and timestamps included). Either way
    numbers are written as jsonb returns them (``1e+16`` as an integer, ``-0.0`` as ``0.0``), so an event
    published from memory carries the values the log holds."""
    printed: CommittedTexts | None = ev.__dict__.get(PRINTED)
    if printed is not None:
        event_id, correlation, causation, occurred_text, recorded_text, payload = printed
        return _encode(ev.position, event_id, ev.stream, ev.version, ev.type, ev.schema_version, payload,
                       ev.agent_id, ev.idempotency_key, correlation, causation or None,
                       _z(occurred_text) if occurred_text else None, _z(recorded_text), ev.lease_resource,
                       ev.fencing_token, None if ev.prev_hash is None else ev.prev_hash.hex(),
                       None if ev.hash is None else ev.hash.hex(), max_bytes=max_bytes)
    occurred, recorded = ev.occurred_at, ev.recorded_at
    if occurred is not None and occurred.utcoffset() != _ZERO:
        occurred = occurred.astimezone(UTC)
    if recorded.utcoffset() != _ZERO:
        recorded = recorded.astimezone(UTC)
    body = {
        "position": ev.position, "event_id": ev.event_id, "stream": ev.stream, "version": ev.version,
        "type": ev.type, "schema_version": ev.schema_version, "payload": ev.payload, "agent_id": ev.agent_id,
        "idempotency_key": ev.idempotency_key, "correlation_id": ev.correlation_id, "causation_id": ev.causation_id,
        "occurred_at": occurred, "recorded_at": recorded, "lease_resource": ev.lease_resource,
        "fencing_token": ev.fencing_token, "prev_hash": None if ev.prev_hash is None else ev.prev_hash.hex(),
        "hash": None if ev.hash is None else ev.hash.hex(),
    }
    value = _to_json(body)
    if b"e+" in value or b"-0.0" in value:  # rare: only then walk the payload (a string may match: harmless)
        body["payload"] = as_jsonb_returns(ev.payload)
        value = _to_json(body)
    stub = len(value) > max_bytes
    if stub:
        value = _to_json({"position": ev.position, "event_id": ev.event_id, "stream": ev.stream,
                          "version": ev.version, "type": ev.type, "schema_version": ev.schema_version,
                          "payload_omitted": True, "size": len(value)})
    return ev.position, ev.stream.encode(), value, _headers(ev.position, ev.version, ev.type), stub


def encode_row(row: Sequence[Any], max_bytes: int = DEFAULT_MAX_COMMITTED_BYTES) -> Encoded:
    """(position, key, value, headers, stub?) of a row in the text form of :data:`COMMITTED_ROW` (the publisher's read
    from the log): every field already a string or an int, except the payload: jsonb prints it with spaces and
    its own key order, so it is written as the canonical text the chain hashed (``canonical_json`` of the parsed
    text, what a subscriber's reference check computes), as the from-memory path writes it. A subscriber then
    hashes the payload's bytes as received (:func:`decode_batch`) instead of printing it again, once per
    subscriber and rebuild; the publisher pays that print once per event it reads from the log."""
    payload = row[_PAYLOAD]
    try:
        text = canonical_json(pydantic_core.from_json(payload))
    except (ValueError, TypeError, RecursionError):  # not expected (intake bounds the log): as jsonb prints it
        text = payload
    fields: list[Any] = list(row)
    fields[_PAYLOAD] = text
    return _encode(*fields, max_bytes=max_bytes)


# SQL expressions, in RECORDED_FIELDS order, that give each column in the form the message carries: ids and
# hashes as text, the payload as jsonb prints it (valid JSON; encode_row prints it canonically), timestamps in UTC
# with microseconds and ``Z``. The reader (eventstore.postgres.logreader) selects these.
COMMITTED_ROW: dict[str, str] = {
    "position": "position", "event_id": "event_id::text", "stream": "stream", "version": "version",
    "type": "type", "schema_version": "schema_version", "payload": "payload::text", "agent_id": "agent_id",
    "idempotency_key": "idempotency_key", "correlation_id": "correlation_id::text",
    "causation_id": "causation_id::text",
    "occurred_at": """to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')""",
    "recorded_at": """to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')""",
    "lease_resource": "lease_resource", "fencing_token": "fencing_token",
    "prev_hash": "encode(prev_hash, 'hex')", "hash": "encode(hash, 'hex')",
}


_PAYLOAD = list(COMMITTED_ROW).index("payload")


def _opt(text: str | None) -> str:
    return "null" if text is None else f'"{text}"'


def _encode(position: int, event_id: str, stream: str, version: int, type: str, schema_version: int,
            payload: str, agent_id: str, idempotency_key: str, correlation_id: str, causation_id: str | None,
            occurred_at: str | None, recorded_at: str, lease_resource: str | None, fencing_token: int | None,
            prev_hash: str | None, hash: str | None, *, max_bytes: int) -> Encoded:
    # One f-string instead of a dict and json.dumps: the ids, timestamps and hashes need no escaping
    # (uuid, ISO and hex text), the free-text fields go through the C string encoder.
    head = (f'{{"position":{int(position)},"event_id":"{event_id}","stream":{_quote(stream)},'
            f'"version":{int(version)},"type":{_quote(type)},"schema_version":{int(schema_version)}')
    value = (f'{head},"payload":{payload},"agent_id":{_quote(agent_id)},'
             f'"idempotency_key":{_quote(idempotency_key)},"correlation_id":"{correlation_id}",'
             f'"causation_id":{_opt(causation_id)},"occurred_at":{_opt(occurred_at)},'
             f'"recorded_at":"{recorded_at}","lease_resource":'
             f'{"null" if lease_resource is None else _quote(lease_resource)},"fencing_token":'
             f'{"null" if fencing_token is None else int(fencing_token)},"prev_hash":{_opt(prev_hash)},'
             f'"hash":{_opt(hash)}}}').encode()
    stub = len(value) > max_bytes
    if stub:
        value = f'{head},"payload_omitted":true,"size":{len(value)}}}'.encode()
    return position, stream.encode(), value, _headers(position, version, type), stub


_FORMAT_HEADER = ("es-format", FORMAT)


def _headers(position: int, version: int, type: str) -> Headers:
    return [_FORMAT_HEADER, ("es-position", str(position)), ("es-stream-version", str(version)), ("es-type", type)]


_UUID = uuid.UUID
_from_json = pydantic_core.from_json
_fromiso = datetime.fromisoformat


def decode_committed(value: bytes | None) -> RecordedEvent:
    # The hot path of every subscriber (a rebuild decodes each event once): pydantic_core's JSON
    # parser is ~2.5x faster than json.loads on bytes, and correlation_id is the event id unless
    # the agent set one, so that UUID is parsed once.
    try:
        d: dict[str, Any] = _from_json(value or b"")
        if d.get("payload_omitted") is True:
            raise PayloadOmitted(int(d["position"]))
        eid, cid, caus, occ = d["event_id"], d["correlation_id"], d["causation_id"], d["occurred_at"]
        event_id = _UUID(eid)
        payload = d["payload"]
        if not isinstance(payload, dict):
            raise TypeError(f"payload is {type(payload).__name__}, not an object")
        lease, token = d["lease_resource"], d["fencing_token"]
        # Taken as they stand (not converted), so their JSON types must be the fields' types: a lease "5" or a
        # token "4" would otherwise hash like the log's "5" and 4 and be applied as another type.
        if not (lease is None or isinstance(lease, str)):
            raise TypeError(f"lease_resource is {type(lease).__name__}, not a string or null")
        if not (token is None or (isinstance(token, int) and not isinstance(token, bool))):
            raise TypeError(f"fencing_token is {type(token).__name__}, not an integer or null")
        return RecordedEvent(
            position=int(d["position"]), event_id=event_id, stream=str(d["stream"]), version=int(d["version"]),
            type=str(d["type"]), schema_version=int(d["schema_version"]), payload=payload,
            agent_id=str(d["agent_id"]), idempotency_key=str(d["idempotency_key"]),
            correlation_id=event_id if cid == eid else _UUID(cid), causation_id=None if caus is None else _UUID(caus),
            occurred_at=None if occ is None else _fromiso(occ), recorded_at=_fromiso(d["recorded_at"]),
            lease_resource=lease, fencing_token=token,
            prev_hash=_hex(d.get("prev_hash")), hash=_hex(d.get("hash")),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DecodeError(f"not a committed-event message: {e!r}") from e


def _hex(value: Any) -> bytes | None:
    """A chain hash from its hex form; a message without one (an older publisher) carries None."""
    return None if value is None else bytes.fromhex(str(value))


# -- the subscriber's one-pass decoder ---------------------------------------------------------------
# The fields decode_committed reads, typed as the publisher writes them: msgspec checks types while it
# reads the bytes and builds the UUIDs in C; the payload stays raw JSON text and is parsed by the same
# parser decode_committed uses. Anything this does not take (another type, a stub, a lone surrogate, any
# error) goes through decode_committed, so both give the same event or the same refusal. One known exception:
# the payload is parsed on its own, one level shallower than inside the whole message, so a payload nested
# exactly at the parser's depth limit is taken here and refused by the reference; harmless (its run is still
# confirmed against the log, so the event applied is the log's), and such a payload cannot be committed anyway.
# Unknown fields are refused (the message falls back): msgspec skips an unknown key without checking its
# UTF-8, where the reference parser refuses the whole message. The schema (WireCommitted) lives in
# committedschema.py: this module is compiled with mypyc (core/native.py), which would spoil its annotations.
_COMMITTED = msgspec.json.Decoder(WireCommitted)
_new = object.__new__
_set = object.__setattr__
_UNKNOWN = uuid.SafeUUID.unknown


# The canonical UUID form (lowercase, hyphenated: what the publisher writes and the chain hashes), ASCII only.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").fullmatch


def _uuid(text: str) -> uuid.UUID:
    """``uuid.UUID(text)`` for the canonical form, built from its integer without UUID's parsing (half its
    cost); ValueError for any other form."""
    if _CANONICAL_UUID(text) is None:
        raise ValueError("not a canonical UUID")
    value: uuid.UUID = _new(_UUID)
    _set(value, "int", int(text.replace("-", ""), 16))
    _set(value, "is_safe", _UNKNOWN)
    return value


def _stamp(text: str) -> tuple[datetime, str]:
    """A timestamp and its text as the chain hashes it (``hashed_time``). The publisher's form
    ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (a non-zero fraction) already is that text with ``+00:00`` for ``Z``;
    any other form that ``fromisoformat`` takes is formatted by ``hashed_time``."""
    value = _fromiso(text)
    if (len(text) == 27 and text[26] == "Z" and text[19] == "." and text[10] == "T" and text[4] == "-"
            and text[7] == "-" and text[13] == ":" and text[16] == ":" and text[20:26] != "000000"):
        return value, text[:26] + "+00:00"
    return value, hashed_time(value)


def _decode_fast(value: bytes) -> tuple[RecordedEvent, bytes | None] | None:
    """One message through :func:`decode_batch`'s fast path, or None (the caller takes the reference path)."""
    (ev,), (link,) = decode_batch((value,))
    return None if ev is None else (ev, link)


_sha256 = hashlib.sha256
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NUL = b"\x00"


def decode_batch(values: Sequence[bytes | None]) -> tuple[list[RecordedEvent | None], list[bytes | None]]:
    """``decode_linked`` of each value as two lists (events, links; no tuple per message for the collector to
    track), for the values the fast path takes; event None for any other (a stub, another form, an error: the
    caller passes that value to :func:`reference_linked`, which decodes it the reference way and raises its
    errors). One loop for a fetched batch, so the per-message work is inlined.

    The intent hash is first computed over the payload's bytes **as received** (the publisher writes the
    canonical text the projector hashed, on both of its paths). Only when the resulting link is not the
    claimed hash is it recomputed the reference way, over ``canonical_json`` of the parsed payload, so a
    message whose payload is spelled otherwise (spaces, key order, ``1.0E2``) verifies exactly as before.
    Why a match on the raw bytes is sound: the claimed hash is only ever trusted once the log holds it at
    that position (the subscriber confirms each run's last hash; the chain covers the rest), and the log's
    hash is sha256 over the canonical text the projector printed. sha256 over ``prefix || raw || suffix``
    equal to sha256 over ``prefix || canonical || suffix`` means, short of a sha256 collision, raw is that
    canonical text byte for byte, so the payload parsed from raw is the payload the log holds. A forger can
    make a link over other bytes match a hash of his own choosing, but then that hash is not the log's and
    the run is refused when it is confirmed (the reference refuses it one step earlier, at the message)."""
    events: list[RecordedEvent | None] = []
    links: list[bytes | None] = []
    append, link_to = events.append, links.append
    decode, from_json, fromiso, new, set_, uuid_cls, unknown = (
        _COMMITTED.decode, _from_json, _fromiso, _new, _set, _UUID, _UNKNOWN)
    sha256, nul, fromhex, canon, canonical_uuid = _sha256, _NUL, bytes.fromhex, canonical_json, _CANONICAL_UUID
    last_rec_text, recorded, rec_hashed = None, _EPOCH, ""
    for value in values:
        if value is None:  # msgspec and pydantic_core both refuse a lone surrogate: such a message falls back
            append(None)
            link_to(None)
            continue
        try:
            w = decode(value)
            if w.payload_omitted is not None:
                append(None)
                link_to(None)
                continue
            raw = bytes(w.payload)
            payload = from_json(raw) if raw[:1] == b"{" else None
            if not isinstance(payload, dict):
                append(None)
                link_to(None)
                continue
            eid_text, cid_text, caus_text = w.event_id, w.correlation_id, w.causation_id
            if canonical_uuid(eid_text) is None:  # _uuid inlined; any other form falls back
                append(None)
                link_to(None)
                continue
            eid: uuid.UUID = new(uuid_cls)
            set_(eid, "int", int(eid_text.replace("-", ""), 16))
            set_(eid, "is_safe", unknown)
            cid = eid if cid_text == eid_text else _uuid(cid_text)
            caus = None if caus_text is None else _uuid(caus_text)
            occ_text = w.occurred_at
            if occ_text is None:
                occurred, occ_hashed = None, ""
            else:
                occurred, occ_hashed = _stamp(occ_text)
            rec_text = w.recorded_at
            if rec_text != last_rec_text:  # one projector batch shares one recorded_at: parsed once per run of it
                recorded = fromiso(rec_text)
                if (len(rec_text) == 27 and rec_text[26] == "Z" and rec_text[19] == "." and rec_text[10] == "T"
                        and rec_text[4] == "-" and rec_text[7] == "-" and rec_text[13] == ":"
                        and rec_text[16] == ":" and rec_text[20:26] != "000000"):
                    rec_hashed = rec_text[:26] + "+00:00"
                else:
                    rec_hashed = hashed_time(recorded)
                last_rec_text = rec_text
            prev_text, hash_text = w.prev_hash, w.hash
            prev = None if prev_text is None else fromhex(prev_text)
            claimed = None if hash_text is None else fromhex(hash_text)
            position, stream, version, etype, schema = w.position, w.stream, w.version, w.type, w.schema_version
            agent, key, lease, token = w.agent_id, w.idempotency_key, w.lease_resource, w.fencing_token
            ev: RecordedEvent = new(RecordedEvent)
            set_(ev, "__dict__", {
                "position": position, "event_id": eid, "stream": stream, "version": version, "type": etype,
                "schema_version": schema, "payload": payload, "agent_id": agent, "idempotency_key": key,
                "correlation_id": cid, "causation_id": caus, "occurred_at": occurred, "recorded_at": recorded,
                "lease_resource": lease, "fencing_token": token, "prev_hash": prev, "hash": claimed})
            if prev is None or claimed is None:
                append(ev)
                link_to(None)
                continue
            # intent_hash and chain_link (core/hashing.py) inlined, the intent over the bytes as received first.
            head = f"{etype}\x00{schema}\x00{stream}\x00".encode()
            fields = (f"{position}\x00{eid_text}\x00{stream}\x00{version}\x00{agent}\x00{key}\x00{cid_text}\x00"
                      f"{caus_text or ''}\x00{occ_hashed}\x00{rec_hashed}\x00{lease or ''}\x00"
                      f"{'' if token is None else token}\x00").encode()
            link = sha256(b"".join((prev, fields, sha256(b"".join((head, raw, nul))).digest()))).digest()
            if link != claimed:  # not the canonical text (or not the claimed hash): the reference way
                intent = sha256(b"".join((head, canon(payload).encode(), nul))).digest()
                link = sha256(b"".join((prev, fields, intent))).digest()
            append(ev)
            link_to(link)
        except (msgspec.MsgspecError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
            append(None)
            link_to(None)
    return events, links


def decode_linked(value: bytes | None) -> tuple[RecordedEvent, bytes | None]:
    """A committed message's event and the chain hash its fields give over its own ``prev_hash`` (None when
    it carries no ``prev_hash`` or ``hash``): it chains onto ``prev`` when ``ev.prev_hash == prev`` and that
    hash equals ``ev.hash``. The subscriber's hot path: one msgspec pass over the bytes, hashed from the
    texts it read; equal to ``decode_committed`` and ``recorded_hash`` (the reference, and the fallback for
    anything else), which raise the same errors (DecodeError, PayloadOmitted)."""
    (fast,), (link,) = decode_batch((value,))
    if fast is not None:
        return fast, link
    return reference_linked(value)


def reference_linked(value: bytes | None) -> tuple[RecordedEvent, bytes | None]:
    """:func:`decode_linked` the reference way only (``decode_committed`` + ``recorded_hash``): for a value
    :func:`decode_batch` already declined, so the fast path is not tried twice; raises DecodeError or
    PayloadOmitted as the reference does."""
    ev = decode_committed(value)
    if ev.prev_hash is None or ev.hash is None:
        return ev, None
    return ev, recorded_hash(ev, ev.prev_hash)
