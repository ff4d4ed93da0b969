"""The side histories next to the event log: outcomes and dead letters (migration 0006), the lock chain
(migration 0009) and identity refusals (migration 0012), each a hash chain with its own head row in
``history_heads``. The database chains each row as it is inserted; this module recomputes the chains in
Python (never trusting a digest function in the database) and reads the heads that ``eventstore anchor`` signs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from eventstore.core.errors import SchemaNotReadyError
from eventstore.core.hashing import GENESIS, field_text, row_hash

Cursor = psycopg.Cursor[Any]

# The columns each chain covers, in the order the migrations' digest functions hash them (0006, 0009, 0012).
CHAINS: dict[str, tuple[str, ...]] = {
    "outcomes": ("chain_seq", "event_id", "agent_id", "idempotency_key", "stream", "status", "expected_version",
                 "current_version", "original_position", "reason", "decided_at", "source_partition",
                 "source_offset", "reason_code"),
    "dead_letters": ("chain_seq", "id", "topic", "partition", "offset", "key", "value", "reason", "recorded_at"),
    "lock_events": ("chain_seq", "event_id", "stream", "type", "schema_version", "payload", "agent_id",
                    "lease_resource", "fencing_token", "recorded_at"),
    "identity_refusals": ("chain_seq", "claimed_event_id", "agent_id", "key_id", "proven", "reason_code", "reason",
                          "idempotency_key", "stream", "expected_version", "current_version", "source_partition",
                          "source_offset", "decided_at"),
}
HEADS = "SELECT name, seq, hash FROM history_heads"
HASH_AT = "SELECT hash FROM {} WHERE chain_seq = %s"


@dataclass(frozen=True)
class SideReport:
    """What verifying one side chain found."""

    name: str
    checked: int
    head_seq: int
    head_hash: bytes
    first_bad_seq: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.first_bad_seq is None


def heads(cur: Cursor) -> dict[str, tuple[int, bytes]]:
    """Each side chain's head: its newest sequence number and hash."""
    try:
        cur.execute(HEADS)
    except psycopg.errors.UndefinedTable as e:
        raise SchemaNotReadyError("the history_heads table is missing; run `eventstore migrate`") from e
    return {str(n): (int(s), bytes(h)) for n, s, h in cur.fetchall()}


def hash_at(cur: Cursor, name: str, seq: int) -> bytes | None:
    """The stored hash of row ``seq`` of a side chain (GENESIS for 0), or None if there is no such row."""
    if seq == 0:
        return GENESIS
    cur.execute(sql.SQL(HASH_AT).format(sql.Identifier(name)), (seq,))
    row = cur.fetchone()
    return None if row is None else bytes(row[0])


def verify(cur: Cursor, name: str, head: tuple[int, bytes], page: int = 5000) -> SideReport:
    """Recompute the chain ``name`` up to ``head``; report the first row that does not verify."""
    columns = CHAINS[name]
    head_seq, head_hash = head
    query = sql.SQL("SELECT {}, prev_hash, hash FROM {} WHERE chain_seq > %s AND chain_seq <= %s "
                    "ORDER BY chain_seq LIMIT %s").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.Identifier(name))
    prev, expected, checked = GENESIS, 1, 0

    def bad(seq: int, problem: str) -> SideReport:
        return SideReport(name, checked, head_seq, head_hash, seq, problem)

    while expected <= head_seq:
        cur.execute(query, (expected - 1, head_seq, page))
        rows = cur.fetchall()
        if not rows:
            return bad(expected, f"{name} ends at row {expected - 1} but its head says {head_seq}: rows were deleted")
        for row in rows:
            values, stored_prev, stored = row[:-2], bytes(row[-2]), bytes(row[-1])
            if int(values[0]) != expected:
                return bad(expected, f"{name} row {expected} is missing")
            h = row_hash(prev, [field_text(v) for v in values])
            if stored_prev != prev or stored != h:
                return bad(expected, f"{name} row {expected} was changed after it was written")
            prev, expected, checked = h, expected + 1, checked + 1
    if prev != head_hash:
        return bad(head_seq, f"the head of {name} is not the hash of its last row")
    return SideReport(name, checked, head_seq, head_hash)


def verify_all(cur: Cursor) -> list[SideReport]:
    """Every side chain, each up to its head."""
    found = heads(cur)
    return [verify(cur, name, found[name]) if name in found
            else SideReport(name, 0, 0, GENESIS, 0, f"the head row of {name} is missing from history_heads")
            for name in CHAINS]
