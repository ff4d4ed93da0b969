"""Hostile intake messages (pure): the bytes an attacker or a broken producer puts on the intake topic.

The oversized message stays under the broker's 1 MB message limit (else it never reaches the topic)
and above the projector's event size limit. Each must end dead-lettered or decided (rejected) with a
reason, and the projector must carry on (issue 8). The list follows the issue: garbage bytes, JSON
that is not an object, deep nesting, a timestamp at the edge of the calendar, an oversized value.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

KINDS = ("garbage", "non-object", "deep-nesting", "bad-timestamp", "oversize")


@dataclass(frozen=True)
class HostileMessage:
    kind: str
    key: bytes
    value: bytes


def hostile_message(kind: str, stream: str, agent_id: str, oversize_bytes: int = 940_000) -> HostileMessage:
    """One message of ``kind`` keyed to ``stream``, so it sits in a partition with normal traffic."""
    key = stream.encode()
    if kind == "garbage":
        return HostileMessage(kind, key, b"\xff\xfe\x00garbage\x80" + uuid.uuid4().bytes)
    if kind == "non-object":
        return HostileMessage(kind, key, b"[]")
    if kind == "deep-nesting":
        depth = 100_000
        return HostileMessage(kind, key, b"[" * depth + b"]" * depth)
    envelope = {
        "event_id": str(uuid.uuid4()), "idempotency_key": f"hostile-{uuid.uuid4().hex}", "stream": stream,
        "expected_version": None, "agent_id": agent_id, "correlation_id": str(uuid.uuid4()),
        "causation_id": None, "occurred_at": "2026-01-01T00:00:00+00:00", "type": "InventoryAdjusted",
        "schema_version": 1, "payload": {"sku": stream.removeprefix("inventory-"), "delta": 0}, "lease": None,
    }
    if kind == "bad-timestamp":
        envelope["occurred_at"] = "0001-01-01T00:00:00+14:00"
        return HostileMessage(kind, key, json.dumps(envelope).encode())
    if kind == "oversize":
        envelope["payload"] = {"sku": "x", "delta": 0, "note": "\U0001f600" * (oversize_bytes // 4)}
        return HostileMessage(kind, key, json.dumps(envelope, ensure_ascii=False).encode())
    raise ValueError(f"unknown hostile message kind {kind!r}; one of {', '.join(KINDS)}")
