"""The msgspec schema of a committed-topic message, as the subscriber's one-pass decoder reads it (pure).

Kept apart from ``committed.py`` because that module is compiled with mypyc (docs/perf-native.md), and a
class defined in a compiled module keeps ``X | None`` annotations as the bare ``type``, which msgspec then
enforces: every message would be refused by the fast path and decoded the slow way. Here the annotations
stay what they say.
"""

from __future__ import annotations

from typing import Any

import msgspec


class WireCommitted(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """A committed message's members as docs/wire-format.md lists them (the fast decoder's schema)."""

    position: int
    event_id: str
    stream: str
    version: int
    type: str
    schema_version: int
    payload: msgspec.Raw
    agent_id: str
    idempotency_key: str
    correlation_id: str
    causation_id: str | None
    occurred_at: str | None
    recorded_at: str
    lease_resource: str | None
    fencing_token: int | None
    prev_hash: str | None = None
    hash: str | None = None
    payload_omitted: Any = None
