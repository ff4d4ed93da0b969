"""History queries for auditors: the event log filtered, keyset-paginated on the global position,
with the outcomes around each write and the lock events that covered it; and the write map.

Every statement is a fixed, named text with bound parameters. A query's WHERE clause is assembled
from the fixed fragments in ``FILTERS`` (chosen by which filters are set, never from input), so each
combination gets a plan that uses its own index (see migration 0007) instead of one generic plan of
``(param IS NULL OR column = param)`` that uses none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from eventstore.core.history_query import HistoryQuery
from eventstore.core.lockevents import LOCK_EVENTS as LOCK_EVENT_CLASSES
from eventstore.postgres.eventlog import EVENT_COLUMNS, to_recorded

Cursor = psycopg.Cursor[Any]

FILTERS: dict[str, str] = {
    "stream": "stream = %(stream)s",
    "agent": "agent_id = %(agent)s",
    "type": "type = %(type)s",
    # A time range also bounds the position, so the page walks the primary key from the first event
    # of the range instead of sorting every event of a wide range. Both bounds are found through the
    # recorded_at index. recorded_at never decreases along positions (both are taken under the
    # log-head lock); if the server's clock ever stepped back, the window's edges follow position order.
    "since": "recorded_at >= %(since)s AND position >= coalesce((SELECT position FROM events "
             "WHERE recorded_at >= %(since)s ORDER BY recorded_at, position LIMIT 1), 0)",
    "until": "recorded_at < %(until)s AND position <= coalesce((SELECT position FROM events "
             "WHERE recorded_at < %(until)s ORDER BY recorded_at DESC, position DESC LIMIT 1), 0)",
    "from_position": "position >= %(from_position)s",
    "to_position": "position <= %(to_position)s",
}
# The causal chain of a correlation id: its events, then causation links followed both ways (an
# event's cause, and the events it caused), until nothing new is found. UNION (not ALL) ends cycles.
CHAIN = """
WITH RECURSIVE chain(event_id, causation_id) AS (
    SELECT event_id, causation_id FROM events WHERE correlation_id = %(correlation)s
    UNION
    SELECT e.event_id, e.causation_id FROM events e JOIN chain c
        ON e.causation_id = c.event_id OR e.event_id = c.causation_id
)
"""
PAGE = "SELECT {columns} FROM events WHERE position > %(after)s{filters} ORDER BY position LIMIT %(limit)s"
# The streams of the coordinator's lock history (eventstore/postgres/leasecommon.py): since migration 0009 in
# the lock chain, read with the older ones from the event log through the view ``lock_history``.
LOCK_STREAM_PREFIXES = ("lease-", "agent-")
LOCK_TYPES = frozenset(t.event_type for t in LOCK_EVENT_CLASSES)
LOCK_FILTERS: dict[str, str] = {
    "stream": "stream = %(stream)s",
    "agent": "agent_id = %(agent)s",
    "type": "type = %(type)s",
    "since": "recorded_at >= %(since)s",
    "until": "recorded_at < %(until)s",
}
LOCK_PAGE = (
    "SELECT log_order, n, position, lock_seq, event_id, stream, type, agent_id, lease_resource, fencing_token, "
    "recorded_at, payload FROM lock_history WHERE (log_order, n) > (%(after_log)s, %(after_n)s){filters} "
    "ORDER BY log_order, n LIMIT %(limit)s"
)
LOCK_CURSOR_SHIFT = 62  # a lock page's cursor: log_order << 62 | n (legacy positions first, then the chain)
CHAIN_FILTER = " AND event_id IN (SELECT event_id FROM chain)"
# Decisions made while the stream stood at the write's version (conflicts and rejections that lost
# against it, identity refusals (migration 0012) included, under the event id they claimed), and duplicates
# that point at it.
OUTCOMES_AROUND = """
SELECT o.event_id, o.agent_id, o.idempotency_key, o.stream, o.status, o.reason_code, o.reason,
       o.expected_version, o.current_version, o.original_position, o.decided_at, w.position AS write_position,
       'outcomes' AS source, NULL::text AS key_id, NULL::boolean AS proven
FROM unnest(%(positions)s::bigint[], %(streams)s::text[], %(versions)s::bigint[]) AS w(position, stream, version)
JOIN outcomes o ON o.stream = w.stream AND o.current_version = w.version AND o.status <> 'duplicate'
UNION ALL
SELECT o.event_id, o.agent_id, o.idempotency_key, o.stream, o.status, o.reason_code, o.reason,
       o.expected_version, o.current_version, o.original_position, o.decided_at, o.original_position,
       'outcomes', NULL::text, NULL::boolean
FROM outcomes o WHERE o.original_position = ANY(%(positions)s::bigint[])
UNION ALL
SELECT r.claimed_event_id, r.agent_id, r.idempotency_key, r.stream, 'rejected', r.reason_code, r.reason,
       r.expected_version, r.current_version, NULL::bigint, r.decided_at, w.position,
       'identity_refusals', r.key_id, r.proven
FROM unnest(%(positions)s::bigint[], %(streams)s::text[], %(versions)s::bigint[]) AS w(position, stream, version)
JOIN identity_refusals r ON r.stream = w.stream AND r.current_version = w.version
ORDER BY decided_at
"""
# The lock history of the leases that writes were made under: the resource's lease stream, same token.
# ``position`` is set for lock events the event log recorded before the lock chain (migration 0009),
# ``lock_seq`` for those in the lock chain.
LOCK_EVENTS = """
SELECT e.position, e.lock_seq, e.type, e.agent_id, e.lease_resource, e.fencing_token, e.recorded_at, e.payload
FROM unnest(%(resources)s::text[], %(tokens)s::bigint[]) AS l(resource, token)
JOIN lock_history e ON e.stream = 'lease-' || l.resource AND e.lease_resource = l.resource
                   AND e.fencing_token = l.token
ORDER BY e.log_order, e.n
"""
CATEGORY = "CASE WHEN stream ~ '.-[^-]*$' THEN regexp_replace(stream, '-[^-]*$', '') ELSE stream END"
WRITERS = f"""
SELECT {CATEGORY} AS resource, agent_id, count(*) AS writes, min(recorded_at) AS first_write,
       max(recorded_at) AS last_write, count(*) FILTER (WHERE lease_resource IS NOT NULL) AS under_lease
FROM events
WHERE stream NOT LIKE 'lease-%%' AND stream NOT LIKE 'agent-%%' AND stream NOT LIKE 'ops-%%'
GROUP BY 1, 2 ORDER BY 1, 2
"""


@dataclass
class HistoryRow:
    """One committed event with what happened around it."""

    event: dict[str, Any]
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    lock_events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class HistoryPage:
    rows: list[HistoryRow]
    next_cursor: str | None  # continue after this page (also to tail: later writes get higher positions)
    more: bool  # the page was full: more rows may follow right now


def page_sql(q: HistoryQuery) -> sql.SQL:
    """The statement for a query: fixed fragments only, chosen by which filters are set."""
    parts = [f" AND {frag}" for name, frag in FILTERS.items() if getattr(q, name) is not None]
    if q.correlation is not None:
        parts.append(CHAIN_FILTER)
    text = PAGE.format(columns=EVENT_COLUMNS, filters="".join(parts))
    if q.correlation is not None:
        text = CHAIN + text
    return sql.SQL(text)  # assembled from the constants above only, never from input


def params(q: HistoryQuery) -> dict[str, Any]:
    return {"stream": q.stream, "agent": q.agent, "type": q.type, "since": q.since, "until": q.until,
            "from_position": q.from_position, "to_position": q.to_position, "correlation": q.correlation,
            "limit": q.limit, "after": q.after}


def event_dict(row: dict[str, Any]) -> dict[str, Any]:
    ev = to_recorded(row)
    return {"position": ev.position, "event_id": str(ev.event_id), "stream": ev.stream, "version": ev.version,
            "type": ev.type, "schema_version": ev.schema_version, "agent_id": ev.agent_id,
            "idempotency_key": ev.idempotency_key, "correlation_id": str(ev.correlation_id),
            "causation_id": None if ev.causation_id is None else str(ev.causation_id),
            "occurred_at": None if ev.occurred_at is None else ev.occurred_at.isoformat(),
            "recorded_at": ev.recorded_at.isoformat(), "lease_resource": ev.lease_resource,
            "fencing_token": ev.fencing_token, "payload": ev.payload}


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else str(v) if k == "event_id" else v)
            for k, v in row.items()}


def is_lock_query(q: HistoryQuery) -> bool:
    """A query of a lock stream (``lease-<resource>`` / ``agent-<id>``), or of a lock event type across
    streams, without position or correlation filters: answered from the lock history, which has no
    global positions of its own."""
    if q.correlation is not None or q.from_position is not None or q.to_position is not None:
        return False
    if q.stream is not None:
        return q.stream.startswith(LOCK_STREAM_PREFIXES)
    return q.type is not None and q.type in LOCK_TYPES


def lock_page(conn: psycopg.Connection[Any], q: HistoryQuery) -> HistoryPage:
    """One page of a lock stream's history: rows with ``position`` (recorded in the event log before
    migration 0009) or ``lock_seq`` (their row in the lock chain); no version, outcomes or lock context."""
    parts = [f" AND {frag}" for name, frag in LOCK_FILTERS.items() if getattr(q, name) is not None]
    text = sql.SQL(LOCK_PAGE.format(filters="".join(parts)))  # fixed fragments only, never input
    mask = (1 << LOCK_CURSOR_SHIFT) - 1
    args = {**params(q), "after_log": q.after >> LOCK_CURSOR_SHIFT, "after_n": q.after & mask}
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(text, args)
        found = cur.fetchall()
    rows = []
    for r in found:
        rows.append(HistoryRow({
            "position": r["position"], "lock_seq": r["lock_seq"], "event_id": str(r["event_id"]),
            "stream": r["stream"], "version": None, "type": r["type"], "agent_id": r["agent_id"],
            "recorded_at": r["recorded_at"].isoformat(), "lease_resource": r["lease_resource"],
            "fencing_token": r["fencing_token"], "payload": r["payload"]}))
    last = (found[-1]["log_order"] << LOCK_CURSOR_SHIFT | found[-1]["n"]) if found else q.after
    return HistoryPage(rows, q.next_cursor(last) if last else None, len(rows) == q.limit)


def query(conn: psycopg.Connection[Any], q: HistoryQuery, *, context: bool = True) -> HistoryPage:
    """One page of history; with ``context`` each write carries its outcomes and lock events."""
    if is_lock_query(q):
        return lock_page(conn, q)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(page_sql(q), params(q))
        rows = [HistoryRow(event_dict(r)) for r in cur.fetchall()]
        if rows and context:
            _attach_context(cur, rows)
    last = rows[-1].event["position"] if rows else q.after
    return HistoryPage(rows, q.next_cursor(last) if last else None, len(rows) == q.limit)


def _attach_context(cur: psycopg.Cursor[dict[str, Any]], rows: list[HistoryRow]) -> None:
    by_pos = {r.event["position"]: r for r in rows}
    cur.execute(OUTCOMES_AROUND, {"positions": list(by_pos), "streams": [r.event["stream"] for r in rows],
                                  "versions": [r.event["version"] for r in rows]})
    for o in cur.fetchall():
        pos = o.pop("write_position")
        by_pos[pos].outcomes.append(_jsonable(o))
    leases = sorted({(r.event["lease_resource"], r.event["fencing_token"]) for r in rows
                     if r.event["lease_resource"] is not None and r.event["fencing_token"] is not None})
    if not leases:
        return
    cur.execute(LOCK_EVENTS, {"resources": [r for r, _ in leases], "tokens": [t for _, t in leases]})
    locks: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for e in cur.fetchall():
        locks.setdefault((e["lease_resource"], e["fencing_token"]), []).append(_jsonable(e))
    for r in rows:
        key = (r.event["lease_resource"], r.event["fencing_token"])
        # Lock events of the writes' own lease stream are themselves history rows: skip self-reference.
        r.lock_events = [e for e in locks.get(key, []) if e["position"] != r.event["position"]]


def writers(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Who writes what: per resource (stream category) and agent, the count of writes, the first
    and last (database time), and how many were made under a lease. The coordinator's own lock and
    agent history streams are left out."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(WRITERS)
        return [_jsonable(r) for r in cur.fetchall()]
