"""Consumer offsets of the intake topic and publisher checkpoints, stored in PostgreSQL.

The projector writes its offsets in the batch transaction (exactly-once effect); these statements are
the whole of how offsets are read, locked, advanced and, for a topic that was recreated, forgotten.
"""

from __future__ import annotations

from typing import Any

import psycopg

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
