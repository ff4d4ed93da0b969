"""Agent registration and guarded streams: the operator's side, through the SECURITY DEFINER functions
of migration 0005 (so an operator login needs only ``eventstore_operator``, and every action records
who did it in ``operator_actions``).

Credentials are generated here (``secrets``) and returned once; the database keeps the HMAC key, which
only the owner and the projector role can read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from eventstore.core.auth import Credential, Guard
from eventstore.core.validation import check_name

Cursor = psycopg.Cursor[Any]

REGISTER = "SELECT eventstore_register_agent(%s, %s, %s, %s, %s)"
ROTATE = "SELECT eventstore_rotate_agent(%s, %s, %s)"
REMOVE = "SELECT eventstore_remove_agent(%s)"
KILL = "SELECT eventstore_kill_agent(%s, %s)"
REVIVE = "SELECT eventstore_revive_agent(%s)"
GUARD = "SELECT eventstore_guard(%s, %s)"
UNGUARD = "SELECT eventstore_unguard(%s)"
LIST_AGENTS = """
SELECT a.agent_id, coalesce(a.status, 'active'), c.key_id, c.status, c.created_at, p.stream_patterns,
       p.event_types
FROM (SELECT DISTINCT agent_id FROM agent_credentials) r
JOIN LATERAL (SELECT key_id, status, created_at FROM agent_credentials x WHERE x.agent_id = r.agent_id
              ORDER BY (status = 'active') DESC, created_at DESC LIMIT 1) c ON true
LEFT JOIN agents a ON a.agent_id = r.agent_id
LEFT JOIN agent_permissions p ON p.agent_id = r.agent_id
ORDER BY r.agent_id
"""
LIST_GUARDS = "SELECT pattern, resource FROM guarded_streams ORDER BY pattern"


@dataclass(frozen=True)
class AgentInfo:
    agent_id: str
    status: str  # active | killed (the kill switch)
    key_id: str
    credential_status: str  # active | rotated | revoked
    registered_at: datetime
    streams: tuple[str, ...] | None
    types: tuple[str, ...] | None


def _names(what: str, values: Sequence[str] | None) -> list[str] | None:
    return None if values is None else [check_name(what, v) for v in values]


def register(cur: Cursor, agent_id: str, streams: Sequence[str] | None = None,
             types: Sequence[str] | None = None) -> Credential:
    """Register an agent (or re-register it: the old credential is retired) and return its new credential."""
    cred = Credential.new()
    cur.execute(REGISTER, (check_name("agent_id", agent_id), cred.key_id, cred.secret,
                           _names("stream pattern", streams), _names("event type", types)))
    return cred


def rotate(cur: Cursor, agent_id: str) -> Credential | None:
    """A new credential for a registered agent (the old one stops working); None if it has none active."""
    cred = Credential.new()
    cur.execute(ROTATE, (agent_id, cred.key_id, cred.secret))
    row = cur.fetchone()
    return cred if row is not None and row[0] else None


def remove(cur: Cursor, agent_id: str) -> bool:
    """Revoke the agent's credential: its events are rejected from the commit on; False if none active."""
    cur.execute(REMOVE, (agent_id,))
    row = cur.fetchone()
    return bool(row and row[0])


def kill(cur: Cursor, agent_id: str, reason: str) -> None:
    """Mark the agent killed through the operator function (leases are revoked by the coordinator)."""
    cur.execute(KILL, (agent_id, reason))


def revive(cur: Cursor, agent_id: str) -> bool:
    cur.execute(REVIVE, (agent_id,))
    row = cur.fetchone()
    return bool(row and row[0])


def list_agents(cur: Cursor) -> list[AgentInfo]:
    cur.execute(LIST_AGENTS)
    return [AgentInfo(str(a), str(s), str(k), str(cs), at, None if sp is None else tuple(sp),
                      None if ty is None else tuple(ty)) for a, s, k, cs, at, sp, ty in cur.fetchall()]


def guard(cur: Cursor, pattern: str, resource: str = "{stream}") -> Guard:
    """Guard the streams matching ``pattern``: a write needs the current exclusive lease on ``resource``
    (``{stream}`` stands for the stream's name)."""
    g = Guard(check_name("pattern", pattern), check_name("resource", resource))
    cur.execute(GUARD, (g.pattern, g.resource))
    return g


def unguard(cur: Cursor, pattern: str) -> bool:
    """Stop guarding ``pattern``; False when it was not guarded. A pattern that could never have been
    guarded (control characters, too long) is refused as such rather than looked up."""
    cur.execute(UNGUARD, (check_name("pattern", pattern),))
    row = cur.fetchone()
    return bool(row and row[0])


def list_guards(cur: Cursor) -> list[Guard]:
    cur.execute(LIST_GUARDS)
    return [Guard(str(p), str(r)) for p, r in cur.fetchall()]
