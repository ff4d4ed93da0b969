"""Anchors against the database: read the heads to sign, and check that the log still holds an anchored
head. The signing and the line format are pure (eventstore.core.anchoring)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from eventstore.core.anchoring import Anchor, Heads
from eventstore.core.errors import SchemaNotReadyError
from eventstore.postgres import eventlog, sidechains

Cursor = psycopg.Cursor[Any]

# One statement, one snapshot: the five heads belong together, with the database's clock.
READ_HEADS = """
SELECT l.position, l.hash, o.seq, o.hash, d.seq, d.hash, k.seq, k.hash, now(), r.seq, r.hash
FROM log_head l, history_heads o, history_heads d, history_heads k, history_heads r
WHERE o.name = 'outcomes' AND d.name = 'dead_letters' AND k.name = 'lock_events' AND r.name = 'identity_refusals'
"""


def current_heads(cur: Cursor) -> tuple[Heads, datetime]:
    """The heads of the log and of the side chains now, and the database time they were read at."""
    try:
        cur.execute(READ_HEADS)
    except psycopg.errors.UndefinedTable as e:
        raise SchemaNotReadyError("the history_heads table is missing; run `eventstore migrate`") from e
    row = cur.fetchone()
    if row is None:
        raise SchemaNotReadyError("a head row (log_head or history_heads) is missing; run `eventstore migrate`")
    heads = Heads(int(row[0]), bytes(row[1]), int(row[2]), bytes(row[3]), int(row[4]), bytes(row[5]),
                  int(row[6]), bytes(row[7]), int(row[9]), bytes(row[10]))
    return heads, row[8]


def check(cur: Cursor, anchor: Anchor) -> list[str]:
    """What no longer holds of an anchored head (empty: the log and side chains still contain it)."""
    h = anchor.heads
    problems = []
    logged = eventlog.hash_at(cur, h.position)
    if logged is None:
        problems.append(f"the event log no longer reaches anchored position {h.position}: its newest events "
                        "were deleted")
    elif logged != h.hash:
        problems.append(f"the event at anchored position {h.position} is not the anchored one (hash "
                        f"{logged.hex()[:16]}... instead of {h.hash.hex()[:16]}...): history was rewritten")
    sides: list[tuple[str, int, bytes]] = [("outcomes", h.outcomes_seq, h.outcomes_hash),
                                           ("dead_letters", h.dead_letters_seq, h.dead_letters_hash)]
    if h.lock_events_seq is not None and h.lock_events_hash is not None:
        sides.append(("lock_events", h.lock_events_seq, h.lock_events_hash))
    if h.identity_refusals_seq is not None and h.identity_refusals_hash is not None:
        sides.append(("identity_refusals", h.identity_refusals_seq, h.identity_refusals_hash))
    for name, seq, expected in sides:
        stored = sidechains.hash_at(cur, name, seq)
        if stored is None:
            problems.append(f"{name} no longer reach anchored row {seq}: rows were deleted")
        elif stored != expected:
            problems.append(f"{name} row {seq} is not the anchored one: {name} were rewritten")
    return problems
