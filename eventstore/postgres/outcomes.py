"""The outcome store: what was decided about each emitted event, read back by event id.

Committed events are their rows in ``events``; every other decision (duplicate, conflict, rejected)
is a row in ``outcomes``, except identity refusals, which are rows of ``identity_refusals`` apart from the
event ids they claim (migration 0012). All three tables are append-only and only the projector role writes
them, so an outcome read here is what the projector decided (the SDK queries here for any notification
that is not sealed with its credential, wire/notifications.py). :class:`PostgresOutcomeStore` answers
decisions on an event id only; identity refusals, which are not decisions on the id they claim, are read
with :func:`lookup_outcome_rows` (for the claimed agent, by docs/security.md's rules) or
``eventstore refusals``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Protocol

import psycopg
from psycopg.rows import tuple_row
from psycopg.types.string import TextLoader

from eventstore.core.outcomes import EmitResult, Outcome, outcome_of, reason_of

LOOKUP_OUTCOMES = """
SELECT event_id, 'committed' AS status, stream, version, position, version AS current_version,
       NULL AS reason, NULL AS reason_code
  FROM events WHERE event_id = ANY(%(ids)s::uuid[])
UNION ALL
SELECT o.event_id, o.status, o.stream, CASE WHEN o.status = 'duplicate' THEN e.version END AS version,
       o.original_position AS position, o.current_version, o.reason, o.reason_code
  FROM outcomes o LEFT JOIN events e ON e.position = o.original_position
 WHERE o.event_id = ANY(%(ids)s::uuid[])
"""


class OutcomeStore(Protocol):
    """Recorded decisions by event id (the contract suite in tests/test_contract_outcomes.py)."""

    def lookup(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, EmitResult]: ...


def result_from_row(row: Sequence[Any], event_id: uuid.UUID | None = None) -> EmitResult:
    """An outcome row (the columns of the lookup queries, in their order) as the EmitResult the agent
    receives (with ``event_id`` instead of the row's first column when given). Tuple rows and dict
    look-ups for the codes: an agent reads one row per emitted event."""
    code = row[7]
    return EmitResult(row[0] if event_id is None else event_id, outcome_of(row[1]), row[2], row[3], row[4],
                      row[5], row[6], None if code is None else reason_of(code))


# The last column ranks the sources: a committed row wins over an outcome row, which wins over an identity
# refusal; rank 3 never answers. Identity refusals (migration 0012) are read only when asked
# (``%(identity)s``) and, for a client with a credential (``%(key)s``), answer only if the envelope carried
# its own key id and either verified under it (``proven``: a holder of the key sent it) or was refused
# because that key id was not registered (then no envelope under it could commit either). Refusals anyone
# could send (unsigned, wrong MAC) answer only a client without a credential, none of whose events can
# commit (docs/security.md, "Identity refusals").
LOOKUP_AGENT_OUTCOMES = """
SELECT event_id, 'committed' AS status, stream, version, position, version AS current_version,
       NULL AS reason, NULL AS reason_code, 0 AS rank
  FROM events WHERE event_id = ANY(%(ids)s::uuid[]) AND agent_id = %(agent)s
UNION ALL
SELECT o.event_id, o.status, o.stream, CASE WHEN o.status = 'duplicate' THEN e.version END AS version,
       o.original_position AS position, o.current_version, o.reason, o.reason_code, 1
  FROM outcomes o LEFT JOIN events e ON e.position = o.original_position
 WHERE o.event_id = ANY(%(ids)s::uuid[]) AND o.agent_id = %(agent)s
UNION ALL
SELECT r.claimed_event_id, 'rejected', r.stream, NULL, NULL, NULL, r.reason, r.reason_code,
       CASE WHEN %(key)s::text IS NULL OR (r.key_id = %(key)s AND (r.proven OR r.reason_code = 'unknown_agent'))
            THEN 2 ELSE 3 END
  FROM identity_refusals r
 WHERE %(identity)s AND r.claimed_event_id = ANY(%(ids)s::uuid[]) AND r.agent_id = %(agent)s
"""
IGNORED = 3  # an identity refusal that may not answer this client: only named in its timeout error


def lookup_outcomes(cur: psycopg.Cursor[Any], ids: Sequence[uuid.UUID], agent_id: str | None = None, *,
                    identity: bool = False, key_id: str | None = None) -> dict[uuid.UUID, EmitResult]:
    """Recorded outcomes of these event ids; a committed row wins over any other record. With
    ``agent_id``, only decisions on that agent's own events (another agent reusing an event id cannot
    answer for it); with ``identity`` too, the identity refusals that may answer a client of that agent
    holding credential ``key_id`` (None: a client without one), last (see LOOKUP_AGENT_OUTCOMES)."""
    found: dict[uuid.UUID, EmitResult] = {}
    if not ids:
        return found
    ranks: dict[uuid.UUID, int] = {}
    with cur.connection.cursor(row_factory=tuple_row) as rc:
        if agent_id is None:
            rc.execute(LOOKUP_OUTCOMES, {"ids": list(ids)})
        else:
            rc.execute(LOOKUP_AGENT_OUTCOMES, {"ids": list(ids), "agent": agent_id, "identity": identity,
                                               "key": key_id})
        for row in rc.fetchall():
            r = result_from_row(row)
            rank = int(row[8]) if agent_id is not None else 0 if r.status is Outcome.COMMITTED else 1
            if rank == IGNORED:
                continue
            if r.event_id not in found or rank < ranks[r.event_id]:
                found[r.event_id] = r
                ranks[r.event_id] = rank
    return found


def lookup_outcome_rows(cur: psycopg.Cursor[Any], ids: Sequence[str], agent_id: str, *,
                        key_id: str | None = None,
                        ignored: dict[str, str] | None = None) -> dict[str, tuple[Any, ...]]:
    """As :func:`lookup_outcomes` for one agent's client holding credential ``key_id`` (None: none), identity
    refusals included, with event ids as their canonical text both ways (no UUID parsed or dumped per event:
    the SDK's listener reads one row per emitted event); the rows, for :func:`result_from_row`, by event id
    text. Identity refusals that may not answer this client are described in ``ignored`` (by event id)."""
    found: dict[str, tuple[Any, ...]] = {}
    if not ids:
        return found
    with cur.connection.cursor(row_factory=tuple_row) as rc:
        rc.adapters.register_loader("uuid", TextLoader)
        rc.execute(LOOKUP_AGENT_OUTCOMES, {"ids": list(ids), "agent": agent_id, "identity": True, "key": key_id})
        for row in rc.fetchall():
            if row[-1] == IGNORED:
                if ignored is not None:
                    ignored[row[0]] = f"{row[7]}: {row[6]}"
                continue
            old = found.get(row[0])
            if old is None or row[-1] < old[-1]:  # committed, then outcomes, then identity refusals
                found[row[0]] = row
    return found


class PostgresOutcomeStore:
    """The outcome store over a connection pool."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    def lookup(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, EmitResult]:
        from eventstore.postgres.connection import converted_errors

        with converted_errors(), self._pool.connection() as conn, conn.cursor() as cur:
            return lookup_outcomes(cur, ids)
