"""Identity refusals (migration 0012): envelopes refused for who they claim to be, recorded apart from the
event ids they claim, so that a forged envelope naming another agent's pending event id can neither
answer that agent's outcome lookup nor take the id's slot in ``outcomes`` (docs/security.md, "Identity
refusals"). The projector appends them in its batch transaction; auditors list them here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import tuple_row

INSERT_IDENTITY_REFUSALS = """
INSERT INTO identity_refusals (claimed_event_id, agent_id, key_id, proven, reason_code, reason, idempotency_key,
                               stream, expected_version, current_version, source_partition, source_offset)
SELECT * FROM unnest(%b::uuid[], %b::text[], %b::text[], %b::bool[], %b::text[], %b::text[], %b::text[],
                     %b::text[], %b::bigint[], %b::bigint[], %b::int[], %b::bigint[])
"""

LIST_REFUSALS = """
SELECT chain_seq, decided_at, agent_id, claimed_event_id, key_id, proven, reason_code, reason, stream,
       source_partition, source_offset
  FROM identity_refusals
 WHERE (%(agent)s::text IS NULL OR agent_id = %(agent)s)
   AND (%(event)s::uuid IS NULL OR claimed_event_id = %(event)s)
   AND (%(after)s::bigint IS NULL OR chain_seq > %(after)s)
 ORDER BY chain_seq
 LIMIT %(limit)s
"""


@dataclass(frozen=True)
class IdentityRefusal:
    """One refused envelope: who and which event id it claimed, the key id it carried (None: unsigned),
    whether its MAC verified under that key (``proven``), why, when (database clock) and where it was read."""

    seq: int
    decided_at: datetime
    agent_id: str
    claimed_event_id: uuid.UUID
    key_id: str | None
    proven: bool
    reason_code: str
    reason: str
    stream: str | None
    source_partition: int | None
    source_offset: int | None


def list_refusals(cur: psycopg.Cursor[Any], agent_id: str | None = None, event_id: uuid.UUID | None = None,
                  after: int | None = None, limit: int = 100) -> list[IdentityRefusal]:
    """Identity refusals in chain order, optionally of one claimed agent or event id, after a chain sequence."""
    with cur.connection.cursor(row_factory=tuple_row) as rc:
        rc.execute(LIST_REFUSALS, {"agent": agent_id, "event": event_id, "after": after, "limit": limit})
        return [IdentityRefusal(*row) for row in rc.fetchall()]
