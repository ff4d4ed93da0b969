"""The committed-event wire format (pure): what the publisher writes to ``<ns>.committed``.

Key: the stream. Value: the recorded event as JSON, including ``position`` (global, gapless) and
``version`` (per stream). Headers repeat position, version and type. A subscriber recognises a
republished event by its position.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from eventstore.envelope import Headers
from eventstore.errors import DecodeError
from eventstore.eventlog import RecordedEvent

FORMAT = "eventstore.committed/1"


def encode_committed(ev: RecordedEvent) -> tuple[bytes, bytes, Headers]:
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
    return ev.stream.encode(), json.dumps(body, separators=(",", ":")).encode(), headers


def decode_committed(value: bytes | None) -> RecordedEvent:
    try:
        d: dict[str, Any] = json.loads(value or b"")
        return RecordedEvent(
            position=int(d["position"]), event_id=uuid.UUID(d["event_id"]), stream=str(d["stream"]),
            version=int(d["version"]), type=str(d["type"]), schema_version=int(d["schema_version"]),
            payload=dict(d["payload"]), agent_id=str(d["agent_id"]), idempotency_key=str(d["idempotency_key"]),
            correlation_id=uuid.UUID(d["correlation_id"]),
            causation_id=None if d["causation_id"] is None else uuid.UUID(d["causation_id"]),
            occurred_at=None if d["occurred_at"] is None else datetime.fromisoformat(d["occurred_at"]),
            recorded_at=datetime.fromisoformat(d["recorded_at"]), lease_resource=d["lease_resource"],
            fencing_token=d["fencing_token"],
        )
    except (ValueError, KeyError, TypeError) as e:
        raise DecodeError(f"not a committed-event message: {e!r}") from e
