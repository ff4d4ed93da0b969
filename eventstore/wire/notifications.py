"""How outcomes reach the emitting agent: PostgreSQL NOTIFY on a channel per agent (pure helpers).

The projector notifies inside its batch transaction, so PostgreSQL delivers the notification only
if the decision committed (a rolled-back batch tells no one anything). The payload names the
decisions (positional, docs/wire-format.md), but a notification is only a wake-up: anyone connected
can NOTIFY, so the SDK reads every decision from the outcome tables, which only the projector writes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from eventstore.core.outcomes import EmitResult

# PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
MAX_PAYLOAD = 7800
# Notified with the newest position by every batch that committed events; wakes the publisher.
COMMITTED_CHANNEL = "es_committed"
_COMPACT = json.JSONEncoder(separators=(",", ":"))
# JSONEncoder.encode builds its C encoder on every call; this is the same C encoder with _COMPACT's settings
# (ASCII output, so a payload's length in characters is its length in bytes), built once.
_C_COMPACT = None if c_make_encoder is None else c_make_encoder(
    None, _COMPACT.default, encode_basestring_ascii, None, ":", ",", False, False, True)


def channel_for(agent_id: str) -> str:
    """A safe channel name (an identifier under 63 bytes) for any agent id."""
    return "es_out_" + hashlib.sha1(agent_id.encode()).hexdigest()[:24]


def _item(row: list[Any]) -> str:
    """One wire row as compact ASCII JSON (the text ``_COMPACT.encode`` gives)."""
    if _C_COMPACT is None:
        return _COMPACT.encode(row)
    return "".join(_C_COMPACT(row, 0))


def pack(results: Iterable[EmitResult]) -> list[str]:
    """JSON arrays of wire results, each under the NOTIFY payload limit."""
    return pack_rows([r.to_wire() for r in results])


def pack_rows(rows: Iterable[list[Any]]) -> list[str]:
    """:func:`pack` of results already in their wire form (``EmitResult.to_wire``); the projector builds
    the rows of committed events straight from the event-id texts its append computed."""
    chunks: list[str] = []
    current: list[str] = []
    size = 2
    for row in rows:
        item = _item(row)
        if len(item) + 2 > MAX_PAYLOAD:  # an overlong reason: keep the decision, cut the text
            row = [*row[:6], (row[6] or "")[:1000], *row[7:]]
            item = _item(row)
        if current and size + len(item) + 1 > MAX_PAYLOAD:
            chunks.append("[" + ",".join(current) + "]")
            current, size = [], 2
        current.append(item)
        size += len(item) + 1
    if current:
        chunks.append("[" + ",".join(current) + "]")
    return chunks


def unpack(payload: str) -> list[EmitResult]:
    return [EmitResult.from_wire(row) for row in json.loads(payload)]
