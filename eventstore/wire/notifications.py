"""How outcomes reach the emitting agent: PostgreSQL NOTIFY on a channel per agent (pure helpers).

The projector notifies inside its batch transaction, so PostgreSQL delivers the notification only
if the decision committed (a rolled-back batch tells no one anything). The payload names the
decisions (positional, docs/wire-format.md), but a notification is only a wake-up: anyone connected
can NOTIFY, so the SDK reads every decision from the outcome tables, which only the projector writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable

from eventstore.core.outcomes import EmitResult

# PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
MAX_PAYLOAD = 7800
# Notified with the newest position by every batch that committed events; wakes the publisher.
COMMITTED_CHANNEL = "es_committed"
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def channel_for(agent_id: str) -> str:
    """A safe channel name (an identifier under 63 bytes) for any agent id."""
    return "es_out_" + hashlib.sha1(agent_id.encode()).hexdigest()[:24]


def pack(results: Iterable[EmitResult]) -> list[str]:
    """JSON arrays of wire results, each under the NOTIFY payload limit."""
    chunks: list[str] = []
    current: list[str] = []
    size = 2
    for r in results:
        item = _COMPACT.encode(r.to_wire())
        if len(item.encode()) + 2 > MAX_PAYLOAD:  # an overlong reason: keep the decision, cut the text
            r = dataclasses.replace(r, reason=(r.reason or "")[:1000])
            item = _COMPACT.encode(r.to_wire())
        if current and size + len(item.encode()) + 1 > MAX_PAYLOAD:
            chunks.append("[" + ",".join(current) + "]")
            current, size = [], 2
        current.append(item)
        size += len(item.encode()) + 1
    if current:
        chunks.append("[" + ",".join(current) + "]")
    return chunks


def unpack(payload: str) -> list[EmitResult]:
    return [EmitResult.from_wire(row) for row in json.loads(payload)]
