"""Consumer offsets of the intake topic and publisher checkpoints, stored in PostgreSQL.

The projector writes its offsets in the batch transaction (exactly-once effect); these statements are
the whole of how offsets are read, locked, advanced and, for a topic that was recreated, forgotten.
"""

from __future__ import annotations

from typing import Any

import psycopg

from eventstore.core.opsevents import OFFSETS_STREAM, OffsetsReset
from eventstore.core.records import DirectEvent, RecordedEvent
from eventstore.postgres import eventlog

ENSURE_OFFSETS = (
    "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) "
    "SELECT %b, %b, p, 0 FROM unnest(%b::int[]) AS p ORDER BY p ON CONFLICT DO NOTHING"
)
LOCK_OFFSETS = (
    "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = %b AND topic = %b "
    "AND partition = ANY(%b::int[]) ORDER BY partition FOR UPDATE"
)
STORE_OFFSETS = (
    "UPDATE consumer_offsets SET next_offset = v.o, updated_at = now() "
    "FROM unnest(%b::int[], %b::bigint[]) AS v(p, o) "
    "WHERE group_id = %b AND topic = %b AND partition = v.p"
)
READ_OFFSETS = "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = %s AND topic = %s"
FORGET_TOPIC = "DELETE FROM consumer_offsets WHERE topic = %s"
FORGET_CHECKPOINT = "DELETE FROM publisher_checkpoints WHERE name = %s"


def load_offsets(conn: psycopg.Connection[Any], group: str, topic: str) -> dict[int, int]:
    """The stored next offset per partition of ``topic`` for ``group``."""
    with conn.cursor() as cur:
        cur.execute(READ_OFFSETS, (group, topic))
        return {int(p): int(o) for p, o in cur.fetchall()}


def forget_topic(conn: psycopg.Connection[Any], topic: str, checkpoint: str | None = None) -> None:
    """Drop the stored offsets of ``topic`` (and a publisher checkpoint): for a broker whose topics
    start empty again (the embedded in-memory broker after a restart)."""
    with conn.transaction():
        conn.execute(FORGET_TOPIC, (topic,))
        if checkpoint is not None:
            conn.execute(FORGET_CHECKPOINT, (checkpoint,))


RESET_OFFSETS = (
    "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) "
    "SELECT %s, %s, p, o FROM unnest(%s::int[], %s::bigint[]) AS v(p, o) "
    "ON CONFLICT (group_id, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()"
)
LOCK_GROUP_OFFSETS = (
    "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = %s AND topic = %s "
    "ORDER BY partition FOR UPDATE"
)
DROP_OTHER_PARTITIONS = (
    "DELETE FROM consumer_offsets WHERE group_id = %s AND topic = %s AND NOT partition = ANY(%s::int[])"
)


def reset_offsets(conn: psycopg.Connection[Any], *, group: str, topic: str, starts: dict[int, int],
                  by: str, reason: str) -> tuple[dict[int, int], RecordedEvent]:
    """Set the stored offsets of ``topic`` to ``starts`` (each partition's first offset on the broker now)
    and record who did it, why and what was stored before, as an OffsetsReset event on the reserved
    ``ops-offsets`` stream, in one transaction. Returns the previous offsets and the recorded event."""
    parts = sorted(starts)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(LOCK_GROUP_OFFSETS, (group, topic))
        previous = {int(p): int(o) for p, o in cur.fetchall()}
        cur.execute(RESET_OFFSETS, (group, topic, parts, [starts[p] for p in parts]))
        cur.execute(DROP_OTHER_PARTITIONS, (group, topic, parts))
        event = OffsetsReset(topic=topic, group=group, by=by, reason=reason,
                             previous={str(p): o for p, o in previous.items()})
        [recorded] = eventlog.append_direct(cur, [DirectEvent(OFFSETS_STREAM, event, agent_id=f"operator:{by}"[:200])])
    return previous, recorded
