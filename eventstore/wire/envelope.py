"""The wire format of the intake topic: an envelope around each event, and its codec (pure, no I/O).

Value: one JSON object (fields of :class:`Envelope`). Key: the stream name in UTF-8, so a stream's
events stay in one partition and in order. Headers repeat the routing fields so that tools can
route without parsing the value.
"""

from __future__ import annotations

import uuid
from typing import Any

import pydantic_core
from pydantic import ValidationError

from eventstore.core.errors import DecodeError, InvalidEventError
from eventstore.core.limits import check_json_depth
from eventstore.core.records import Envelope, LeaseRef
from eventstore.core.validation import CONTROL_CHARS, MAX_NAME, check_name

FORMAT = "eventstore.envelope/1"
__all__ = ["FORMAT", "Envelope", "Headers", "LeaseRef", "decode", "encode", "salvage_ids"]


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
        check_json_depth(value, "the envelope")
    except InvalidEventError as e:
        raise DecodeError(str(e)) from e
    try:
        return Envelope.model_validate_json(value)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(value)"
        raise DecodeError(f"not a valid envelope: {loc}: {first['msg']} ({e.error_count()} error(s))") from e


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
        readable = isinstance(key, str) and key and len(key) <= MAX_NAME and not CONTROL_CHARS.search(key)
        safe_key = key if readable else None
        return uuid.UUID(str(obj["event_id"])), check_name("agent_id", obj["agent_id"]), safe_key
    except (ValueError, KeyError, TypeError, InvalidEventError, RecursionError):
        return None
