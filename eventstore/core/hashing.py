"""Canonical bytes and hashes of events (pure).

``intent_hash`` identifies what an idempotency key stands for (type, schema, stream, payload), so a
key reused for something else is told apart from a retry. ``chain_hash`` links each event to the
previous one, making the log tamper-evident.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

GENESIS = bytes(32)


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no spaces; equal data gives equal text (also after a jsonb round trip)."""
    return _CANONICAL.encode(obj)


# One encoder for all calls: json.dumps with non-default arguments builds a new encoder each time.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def intent_hash(event_type: str, schema_version: int, stream: str, payload_json: str) -> bytes:
    h = hashlib.sha256()
    for part in (event_type, str(schema_version), stream, payload_json):
        h.update(part.encode())
        h.update(b"\x00")
    return h.digest()


def _ts(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).isoformat()


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
    h = hashlib.sha256(prev)
    fields = (
        str(position), event_id, stream, str(version), agent_id, idempotency_key, correlation_id,
        causation_id or "", _ts(occurred_at), _ts(recorded_at), lease_resource or "",
        "" if fencing_token is None else str(fencing_token),
    )
    for part in fields:
        h.update(part.encode())
        h.update(b"\x00")
    h.update(intent)
    return h.digest()
