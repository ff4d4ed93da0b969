"""The wire format of the intake topic: an envelope around each event, and its codec (pure, no I/O).

Value: one JSON object (fields of :class:`Envelope`). Key: the stream name in UTF-8, so a stream's
events stay in one partition and in order. Headers repeat the routing fields so that tools can
route without parsing the value.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
import pydantic_core
from pydantic import ValidationError

from eventstore.core.auth import Credential, Signer
from eventstore.core.errors import DecodeError, InvalidEventError
from eventstore.core.limits import (
    MAX_JSON_DEPTH,
    check_json_depth,
    has_lone_surrogate,
    json_depth,
    may_hold_surrogates,
)
from eventstore.core.records import Envelope, EnvelopeFields, LeaseRef
from eventstore.core.validation import CONTROL_CHARS, MAX_BIGINT, MAX_NAME, check_name

FORMAT = "eventstore.envelope/1"
__all__ = ["FORMAT", "Envelope", "EnvelopeWriter", "Headers", "IntakeEnvelope", "LeaseRef", "decode",
           "decode_intake", "encode", "envelope_json", "salvage_ids"]


Headers = list[tuple[str, str | bytes | None]]


def envelope_json(event_id: uuid.UUID | str, idempotency_key: str, stream: str, expected_version: int | None,
                  agent_id: str, correlation_id: uuid.UUID | str, causation_id: uuid.UUID | str | None,
                  occurred_at: datetime | None, type_: str, schema_version: int, payload: dict[str, Any],
                  lease: LeaseRef | None) -> bytes:
    """The unsigned value: the same bytes as ``Envelope.model_dump_json(exclude={"auth"})`` (field order,
    ``null`` for absent fields, pydantic's UUID, date-time and string forms), written by one call to
    pydantic's serializer from plain fields, without building and dumping an Envelope model."""
    return pydantic_core.to_json({
        "event_id": event_id, "idempotency_key": idempotency_key, "stream": stream,
        "expected_version": expected_version, "agent_id": agent_id, "correlation_id": correlation_id,
        "causation_id": causation_id, "occurred_at": occurred_at, "type": type_, "schema_version": schema_version,
        "payload": payload, "lease": None if lease is None else {"resource": lease.resource, "token": lease.token},
    }, inf_nan_mode="null")


class EnvelopeWriter:
    """Writes one agent's intake messages: (key, value, headers) exactly as :func:`encode` writes them,
    signed with the agent's credential, with what is the same for every message (the signer's key
    pads, the agent and per-type headers) prepared once. The SDK's hot path: no Envelope model."""

    __slots__ = ("_agent_header", "_agent_id", "_credential", "_signer", "_type_headers")

    def __init__(self, agent_id: str, credential: Credential | None) -> None:
        self._agent_id = agent_id
        self._credential = credential
        self._signer = None if credential is None else Signer(credential)
        self._agent_header = ("es-agent", agent_id.encode())
        self._type_headers: dict[tuple[str, int], Headers] = {}

    def write(self, event_id: str, idempotency_key: str, stream: str, expected_version: int | None,
              correlation_id: uuid.UUID | str, causation_id: uuid.UUID | None, occurred_at: datetime | None,
              type_: str, schema_version: int, payload: dict[str, Any],
              lease: LeaseRef | None) -> tuple[bytes, bytes, Headers]:
        """The message of one event of this agent (``event_id`` in its canonical string form)."""
        value = envelope_json(event_id, idempotency_key, stream, expected_version, self._agent_id, correlation_id,
                              causation_id, occurred_at, type_, schema_version, payload, lease)
        if self._signer is not None:
            value = self._signer.sign(value)
        head = self._type_headers.get((type_, schema_version))
        if head is None:
            head = self._type_headers[(type_, schema_version)] = [
                ("es-format", FORMAT.encode()), ("es-type", type_.encode()),
                ("es-schema-version", str(schema_version).encode()), self._agent_header]
        return stream.encode(), value, [*head, ("es-event-id", event_id.encode())]

    def encode(self, env: Envelope) -> tuple[bytes, bytes, Headers]:
        """A prepared envelope's message; its ``agent_id`` is written as it is (signed with this writer's
        credential, so the projector refuses another agent's envelope)."""
        if env.agent_id != self._agent_id:
            return EnvelopeWriter(env.agent_id, self._credential).encode(env)
        return self.write(str(env.event_id), env.idempotency_key, env.stream, env.expected_version,
                          env.correlation_id, env.causation_id, env.occurred_at, env.type, env.schema_version,
                          env.payload, env.lease)


def encode(env: Envelope, credential: Credential | None = None) -> tuple[bytes, bytes, Headers]:
    """(key, value, headers) for producing an envelope; with a credential the value is signed
    (its last member is ``auth``, an HMAC over the bytes before it; see docs/security.md)."""
    return EnvelopeWriter(env.agent_id, credential).encode(env)


def decode(value: bytes | None) -> Envelope:
    """Parse an intake message value; DecodeError says what is wrong with it."""
    if value is None:
        raise DecodeError("message has no value (a tombstone?); expected an envelope JSON object")
    try:
        check_json_depth(value, "the envelope")
    except InvalidEventError as e:
        raise DecodeError(str(e)) from e
    try:
        return Envelope.model_validate_json(value)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(value)"
        raise DecodeError(f"not a valid envelope: {loc}: {first['msg']} ({e.error_count()} error(s))") from e


# -- the projector's one-pass decoder ------------------------------------------------------------------
# The same fields and limits as ``Envelope`` (core/records.py): types, lengths and ranges are checked by
# msgspec while it reads the bytes; the four names' control characters and the auth member's form are
# checked after it, one regex each (cheaper than one per field). The payload is kept as its raw JSON text
# and parsed once, for the event class. Patterns end in \\Z: Python's $ also matches before a final newline.
_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME)]
_AUTH_FORM = re.compile(r"[0-9a-f]{16}:[A-Za-z0-9_-]{43}\Z")


# gc=False: an envelope holds strings, numbers, UUIDs, a datetime, the payload's bytes and these small structs,
# never a reference back to itself, so the collector need not track the three objects of every message.
class _WireLease(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    resource: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME, pattern=r"^[^\x00-\x1f\x7f]+\Z")]
    token: Annotated[int, msgspec.Meta(ge=1, le=MAX_BIGINT)]


class _WireAuth(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    key_id: str
    mac: str


class IntakeEnvelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """An envelope as the projector reads it: the fields of ``Envelope``, the payload as raw JSON bytes."""

    event_id: uuid.UUID
    idempotency_key: _Name
    stream: _Name
    agent_id: _Name
    correlation_id: uuid.UUID
    type: _Name
    schema_version: Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
    payload: msgspec.Raw
    expected_version: Annotated[int, msgspec.Meta(ge=0, le=MAX_BIGINT)] | None = None
    causation_id: uuid.UUID | None = None
    occurred_at: datetime | None = None
    lease: _WireLease | None = None
    auth: _WireAuth | None = None


_INTAKE = msgspec.json.Decoder(IntakeEnvelope)
# msgspec rounds a fraction of a second beyond microseconds, pydantic truncates it: such timestamps (and
# anything that looks like one) take decode()'s path so that both decoders give the same instant. A
# \u escape could spell the digits (or the dot) of a timestamp past that pattern, so an envelope with a
# timestamp and any \u escape takes decode()'s path too (found in review: "...59.999999\u0039Z").
_SUB_MICROSECONDS = re.compile(rb":\d\d[.,]\d{7}")
_ESCAPE = b"\\u"
_BACKSLASH = b"\\"


def decode_intake(value: bytes | None) -> tuple[EnvelopeFields, dict[str, Any]]:
    """The envelope and its payload (parsed JSON, not yet checked against the event class) in one pass over
    the bytes. Anything this fast path does not take (a lone surrogate escape, a naive timestamp, any error)
    goes through :func:`decode`, so exactly what ``decode`` accepts is accepted and every refusal carries
    ``decode``'s reason; DecodeError says what is wrong."""
    if value is not None:
        # Every escape starts with a backslash: one memchr over the bytes answers the escape tests below
        # for the common envelope, which holds none.
        escaped = _BACKSLASH in value
        if not (escaped and may_hold_surrogates(value)):
            fast = _decode_fast(value, escaped)
            if fast is not None:
                return fast
    full = decode(value)
    return full, full.payload


def _decode_fast(value: bytes, escaped: bool) -> tuple[IntakeEnvelope, dict[str, Any]] | None:
    """The fast path of :func:`decode_intake`, or None to let ``decode`` decide. The nesting limit is
    checked on the payload alone, after msgspec: every other member is a scalar or an object of scalars
    (msgspec refused anything else), so the envelope is one level deeper than its payload; msgspec stops a
    deeper nesting than its recursion limit with RecursionError, which leaves it to ``decode`` too."""
    try:
        env = _INTAKE.decode(value)
        raw = bytes(env.payload)
        stamp, auth = env.occurred_at, env.auth
        names = f"{env.idempotency_key}{env.stream}{env.agent_id}{env.type}"
        # printable ASCII holds no control character: the regex runs only for other text
        if (raw[:1] == b"{" and json_depth(raw) < MAX_JSON_DEPTH
                and ((names.isascii() and names.isprintable()) or not CONTROL_CHARS.search(names))
                and (auth is None or _AUTH_FORM.match(f"{auth.key_id}:{auth.mac}"))
                and (stamp is None or (stamp.tzinfo is not None and _SUB_MICROSECONDS.search(value) is None
                                       and not (escaped and _ESCAPE in value)))):
            payload = pydantic_core.from_json(raw)
            if isinstance(payload, dict):
                return env, payload
    except (msgspec.MsgspecError, InvalidEventError, ValueError, RecursionError):
        pass  # decode() names the problem
    return None


def salvage_ids(value: bytes | None) -> tuple[uuid.UUID, str, str | None] | None:
    """From an envelope that failed to decode or validate, the (event id, agent id, key) if they are
    readable, so the waiting agent can still be told why its event was rejected."""
    if value is None:
        return None
    try:
        check_json_depth(value)
        obj: Any = pydantic_core.from_json(value)
        if not isinstance(obj, dict):  # valid JSON that is no object ([], "x", 1, null) names nobody
            return None
        key = obj.get("idempotency_key")
        readable = (isinstance(key, str) and key and len(key) <= MAX_NAME and not CONTROL_CHARS.search(key)
                    and not has_lone_surrogate(key))
        safe_key = key if readable else None
        agent_id = check_name("agent_id", obj["agent_id"])
        if has_lone_surrogate(agent_id):  # not storable: nobody to tell
            return None
        return uuid.UUID(str(obj["event_id"])), agent_id, safe_key
    except (ValueError, KeyError, TypeError, InvalidEventError, RecursionError):
        return None
