"""The committed-event wire format (pure): what the publisher writes to ``<ns>.committed``.

Key: the stream. Value: the recorded event as JSON, including ``position`` (global, gapless) and
``version`` (per stream). Headers repeat position, version and type. A subscriber recognises a
republished event by its position.

The value is UTF-8 JSON (non-ASCII text is not escaped: an escaped emoji takes 12 bytes instead of 4).
A value larger than the committed limit (``EVENTSTORE_MAX_COMMITTED_BYTES``) is replaced by a stub
carrying position, stream, version, type and ``"payload_omitted": true``; :func:`decode_committed`
raises :class:`PayloadOmitted` for it and a subscriber reads that event from PostgreSQL by position.
The publisher therefore never meets a message the broker refuses for its size.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import pydantic_core

from eventstore.core.errors import DecodeError
from eventstore.core.limits import DEFAULT_MAX_COMMITTED_BYTES
from eventstore.core.records import RecordedEvent
from eventstore.wire.envelope import Headers

FORMAT = "eventstore.committed/1"


class PayloadOmitted(DecodeError):
    """A committed-topic stub for an event too large for the topic: read it from the log by position."""

    def __init__(self, position: int) -> None:
        self.position = position
        super().__init__(f"event at position {position} was too large for the committed topic; "
                         "read it from the event log")


def encode_committed(ev: RecordedEvent, max_bytes: int = DEFAULT_MAX_COMMITTED_BYTES) -> tuple[bytes, bytes, Headers]:
    """(key, value, headers) of a committed event; a stub when the value would exceed ``max_bytes``."""
    body = {
        "position": ev.position, "event_id": str(ev.event_id), "stream": ev.stream, "version": ev.version,
        "type": ev.type, "schema_version": ev.schema_version, "payload": ev.payload, "agent_id": ev.agent_id,
        "idempotency_key": ev.idempotency_key, "correlation_id": str(ev.correlation_id),
        "causation_id": None if ev.causation_id is None else str(ev.causation_id),
        "occurred_at": None if ev.occurred_at is None else ev.occurred_at.isoformat(),
        "recorded_at": ev.recorded_at.isoformat(), "lease_resource": ev.lease_resource,
        "fencing_token": ev.fencing_token,
    }
    headers: Headers = [
        ("es-format", FORMAT), ("es-position", str(ev.position)), ("es-stream-version", str(ev.version)),
        ("es-type", ev.type),
    ]
    value = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    if len(value) > max_bytes:
        stub = {"position": ev.position, "event_id": str(ev.event_id), "stream": ev.stream, "version": ev.version,
                "type": ev.type, "schema_version": ev.schema_version, "payload_omitted": True, "size": len(value)}
        value = json.dumps(stub, separators=(",", ":"), ensure_ascii=False).encode()
    return ev.stream.encode(), value, headers


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
        return RecordedEvent(
            position=int(d["position"]), event_id=event_id, stream=str(d["stream"]), version=int(d["version"]),
            type=str(d["type"]), schema_version=int(d["schema_version"]), payload=payload,
            agent_id=str(d["agent_id"]), idempotency_key=str(d["idempotency_key"]),
            correlation_id=event_id if cid == eid else _UUID(cid), causation_id=None if caus is None else _UUID(caus),
            occurred_at=None if occ is None else _fromiso(occ), recorded_at=_fromiso(d["recorded_at"]),
            lease_resource=d["lease_resource"], fencing_token=d["fencing_token"],
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DecodeError(f"not a committed-event message: {e!r}") from e
