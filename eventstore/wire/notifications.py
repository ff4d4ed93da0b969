"""How outcomes reach the emitting agent: PostgreSQL NOTIFY on a channel per agent (pure helpers).

The projector notifies inside its batch transaction, so PostgreSQL delivers the notification only
if the decision committed (a rolled-back batch tells no one anything). The payload names the
decisions (positional, docs/wire-format.md). Anyone connected can NOTIFY, so an unsealed payload is only a
wake-up (the SDK reads the decisions from the outcome tables, which only the projector writes). A payload
of decisions on envelopes the agent signed is **sealed**: its last element is an HMAC under the key of the
credential that signed them, which only that agent and the projector (and the database owner) hold, so the
SDK takes a sealed payload that verifies as the decisions themselves, without a query (:class:`OutcomeSeal`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from eventstore.core.auth import Credential, Signer
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


def pack(results: Iterable[EmitResult], seal: OutcomeSeal | None = None) -> list[str]:
    """JSON arrays of wire results, each under the NOTIFY payload limit (sealed with ``seal``)."""
    return pack_rows([r.to_wire() for r in results], seal)


def pack_rows(rows: Iterable[list[Any]], seal: OutcomeSeal | None = None) -> list[str]:
    """:func:`pack` of results already in their wire form (``EmitResult.to_wire``); the projector builds
    the rows of committed events straight from the event-id texts its append computed. With ``seal``
    (the rows are decisions on envelopes signed with that seal's credential), every chunk is sealed and
    leaves room for its seal under the limit."""
    limit = MAX_PAYLOAD if seal is None else MAX_PAYLOAD - SEAL_BYTES
    chunks: list[str] = []
    current: list[str] = []
    size = 2
    for row in rows:
        item = _item(row)
        if len(item) + 2 > limit:  # an overlong reason: keep the decision, cut the text
            row = [*row[:6], (row[6] or "")[:1000], *row[7:]]
            item = _item(row)
        if current and size + len(item) + 1 > limit:
            chunks.append("[" + ",".join(current) + "]")
            current, size = [], 2
        current.append(item)
        size += len(item) + 1
    if current:
        chunks.append("[" + ",".join(current) + "]")
    return chunks if seal is None else [seal.seal(c) for c in chunks]


def unpack(payload: str) -> list[EmitResult]:
    """The results a payload carries (a seal, the last element when present, is not a result)."""
    return [EmitResult.from_wire(row) for row in json.loads(payload) if isinstance(row, list)]


# A sealed payload ends with the seal as its last element: ,"om1.<key id>.<43 base64url>"]
SEAL_MARK = ',"om1.'
_SEAL = re.compile(r',"om1\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})"\]\Z')
SEAL_BYTES = len(SEAL_MARK) + 16 + 1 + 43 + 1  # what a seal adds to a chunk (its "]" was there already)
_DOMAIN = b"eventstore.outcomes/1\n"
_URLSAFE = bytes.maketrans(b"+/", b"-_")
_ROW_FIELDS = 8


class OutcomeSeal:
    """Seals and opens one agent's outcome notifications with one of its credentials (HMAC-SHA256, the
    key's pads hashed once, as the envelope signer does).

    The MAC covers ``eventstore.outcomes/1``, the agent id and the payload's exact bytes without the seal
    (the JSON array of rows up to its closing bracket): a row cannot be moved to another agent (its key and
    id differ), to another payload, or changed, cut or added to without the key. Only the agent, the
    projector role and the database owner can read the key (docs/security.md)."""

    __slots__ = ("_head", "_signer", "agent_id", "key_id")

    def __init__(self, agent_id: str, credential: Credential) -> None:
        self.agent_id = agent_id
        self.key_id = credential.key_id
        self._signer = Signer(credential)
        self._head = _DOMAIN + agent_id.encode() + b"\n"

    def _tag(self, unsealed: str) -> str:
        raw = self._signer.mac(self._head + unsealed.encode())
        return base64.b64encode(raw)[:43].translate(_URLSAFE).decode()

    def seal(self, unsealed: str) -> str:
        """A chunk (a JSON array of rows, ASCII) with its seal appended as the last element."""
        return f'{unsealed[:-1]},"om1.{self.key_id}.{self._tag(unsealed)}"]'

    def open(self, payload: str) -> list[list[Any]] | None:
        """The rows of a payload sealed with this agent's credential, or None for anything else (unsealed,
        sealed with another key or for another agent, changed, cut, or not rows of the documented form):
        the caller then treats it as a wake-up only."""
        i = payload.rfind(SEAL_MARK)
        if i < 0:
            return None
        m = _SEAL.match(payload, i)
        if m is None or m.group(1) != self.key_id:
            return None
        unsealed = payload[:i] + "]"
        try:
            if not hmac.compare_digest(self._tag(unsealed), m.group(2)):
                return None
            rows = json.loads(unsealed)
        except (ValueError, UnicodeEncodeError):
            return None
        if not isinstance(rows, list) or not all(
                isinstance(r, list) and len(r) == _ROW_FIELDS and isinstance(r[0], str) for r in rows):
            return None
        return rows
