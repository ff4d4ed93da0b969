"""The wire format of the intake topic: an envelope around each event, and its codec (pure, no I/O).

Value: one JSON object (fields of :class:`Envelope`). Key: the stream name in UTF-8, so a stream's
events stay in one partition and in order. Headers repeat the routing fields so that tools can
route without parsing the value.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from eventstore.errors import DecodeError, InvalidEventError

FORMAT = "eventstore.envelope/1"
MAX_NAME = 200
MAX_BIGINT = 2**63 - 1  # PostgreSQL bigint: larger numbers would fail in the projector's transaction
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Streams written only by the server (the coordinator's lock history); agents may not forge them.
RESERVED_STREAM_PREFIXES = ("lease-", "agent-")


class LeaseRef(BaseModel):
    """The lease an event was written under: the resource and the fencing token of the grant."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    resource: str = Field(min_length=1, max_length=MAX_NAME, pattern=r"^[^\x00-\x1f\x7f]+$")
    token: int = Field(ge=1, le=MAX_BIGINT)


class Envelope(BaseModel):
    """Everything the projector needs to decide on one event. The database adds position and
    recorded-at on commit; ``occurred_at`` is only what the agent claims."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: uuid.UUID
    idempotency_key: str = Field(min_length=1, max_length=MAX_NAME)
    stream: str = Field(min_length=1, max_length=MAX_NAME)
    expected_version: int | None = Field(default=None, ge=0, le=MAX_BIGINT)
    agent_id: str = Field(min_length=1, max_length=MAX_NAME)
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None = None
    occurred_at: AwareDatetime | None = None
    type: str = Field(min_length=1, max_length=MAX_NAME)
    schema_version: int = Field(ge=1, le=2**31 - 1)
    payload: dict[str, Any]
    lease: LeaseRef | None = None

    @field_validator("idempotency_key", "stream", "agent_id", "type")
    @classmethod
    def _no_control_chars(cls, v: str) -> str:
        if _CONTROL.search(v):
            raise ValueError("must not contain control characters")
        return v


def check_no_nul(event_type: str, payload: object) -> None:
    """PostgreSQL cannot store a NUL character in jsonb or text; refuse it with a clear reason."""
    stack = [payload]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise InvalidEventError(f"{event_type} payload contains a NUL character, which PostgreSQL "
                                        "cannot store; remove it or encode the value")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def check_stream(value: object) -> str:
    """A stream name an agent may write: valid, and not one of the server's own history streams."""
    stream = check_name("stream", value)
    if stream.startswith(RESERVED_STREAM_PREFIXES):
        raise InvalidEventError(f"stream {stream!r} is reserved for the coordinator's lock history "
                                f"(prefixes {', '.join(RESERVED_STREAM_PREFIXES)}); use another name")
    return stream


def printable(text: str) -> str:
    """A reason safe to store and show: control characters (NUL included) written as escapes."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def check_name(what: str, value: object) -> str:
    """Validate a stream, agent id or idempotency key in the SDK, with a message naming it."""
    if not isinstance(value, str) or not value:
        raise InvalidEventError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > MAX_NAME:
        raise InvalidEventError(f"{what} is {len(value)} characters long; at most {MAX_NAME} are allowed")
    if _CONTROL.search(value):
        raise InvalidEventError(f"{what} {value!r} contains control characters")
    return value


Headers = list[tuple[str, str | bytes | None]]


def encode(env: Envelope) -> tuple[bytes, bytes, Headers]:
    """(key, value, headers) for producing an envelope."""
    headers: Headers = [
        ("es-format", FORMAT.encode()),
        ("es-type", env.type.encode()),
        ("es-schema-version", str(env.schema_version).encode()),
        ("es-agent", env.agent_id.encode()),
        ("es-event-id", str(env.event_id).encode()),
    ]
    return env.stream.encode(), env.model_dump_json(exclude_none=False).encode(), headers


def decode(value: bytes | None) -> Envelope:
    """Parse an intake message value; DecodeError says what is wrong with it."""
    if value is None:
        raise DecodeError("message has no value (a tombstone?); expected an envelope JSON object")
    try:
        return Envelope.model_validate_json(value)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(value)"
        raise DecodeError(f"not a valid envelope: {loc}: {first['msg']} ({e.error_count()} error(s))") from e


def salvage_ids(value: bytes | None) -> tuple[uuid.UUID, str, str | None] | None:
    """From an envelope that failed to decode or validate, the (event id, agent id, key) if they are
    readable, so the waiting agent can still be told why its event was rejected."""
    import json

    try:
        obj = json.loads(value or b"")
        key = obj.get("idempotency_key")
        safe_key = key if isinstance(key, str) and key and len(key) <= MAX_NAME and not _CONTROL.search(key) else None
        return uuid.UUID(str(obj["event_id"])), check_name("agent_id", obj["agent_id"]), safe_key
    except (ValueError, KeyError, TypeError, InvalidEventError):
        return None
