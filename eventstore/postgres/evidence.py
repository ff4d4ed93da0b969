"""Evidence for the readiness check, gathered from the live database (named, parameterised SQL).

Each field of :class:`eventstore.core.checks.Evidence` is measured here; the pass/fail rules are
pure and live in eventstore/core/checks.py. Lock order is replayed with the coordinator's default order
(resource ids compared as strings): a deployment with its own ``rank`` function is judged by ids.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from eventstore.core.checks import Evidence, lock_order_let_through
from eventstore.core.settings import Settings
from eventstore.postgres.eventlog import head_position, verify_chain

Connection = psycopg.Connection[Any]

MAP = """
SELECT count(DISTINCT CASE WHEN stream ~ '.-[^-]*$' THEN regexp_replace(stream, '-[^-]*$', '') ELSE stream END),
       count(DISTINCT agent_id)
FROM events WHERE stream NOT LIKE 'lease-%%' AND stream NOT LIKE 'agent-%%' AND stream NOT LIKE 'ops-%%'
"""
# The inventory read model against the fold of its streams: the last InventoryUpdated sets the
# count, later InventoryAdjusted deltas add to it, the version is the stream's last.
INVENTORY_FOLD = """
WITH ev AS (
    SELECT payload->>'sku' AS sku, version, type, payload FROM events
    WHERE stream LIKE 'inventory-%%' AND type IN ('InventoryUpdated', 'InventoryAdjusted')
), last_set AS (
    SELECT DISTINCT ON (sku) sku, version, (payload->>'quantity')::bigint AS q
    FROM ev WHERE type = 'InventoryUpdated' ORDER BY sku, version DESC
), folded AS (
    SELECT ev.sku,
           coalesce(max(ls.q), 0) + coalesce(sum((ev.payload->>'delta')::bigint)
               FILTER (WHERE ev.type = 'InventoryAdjusted' AND ev.version > coalesce(ls.version, 0)), 0) AS quantity,
           max(ev.version) AS version
    FROM ev LEFT JOIN last_set ls USING (sku) GROUP BY ev.sku
)
SELECT coalesce(f.sku, t.sku), f.quantity, t.quantity, f.version, t.version
FROM folded f FULL JOIN inventory t ON t.sku = f.sku
WHERE f.quantity IS DISTINCT FROM t.quantity OR f.version IS DISTINCT FROM t.version
ORDER BY 1 LIMIT 20
"""
INVENTORY_ROWS = "SELECT count(*) FROM inventory"
GRANTS = """
SELECT count(*), mode() WITHIN GROUP (ORDER BY (payload->>'ttl_seconds')::float8),
       max((payload->>'ttl_seconds')::float8)
FROM lock_history WHERE type = 'LeaseGranted'
"""
COUNT_TYPE = "SELECT count(*) FROM lock_history WHERE type = %s"  # lock events: legacy ones and the lock chain
# The lock history the lock-order replay needs (core.checks.lock_order_let_through), in log order.
LOCK_HISTORY = """
SELECT type, agent_id, payload->>'resource', (payload->>'token')::bigint FROM lock_history
WHERE type IN ('LeaseGranted', 'LeaseReleased', 'LeaseExpired', 'LeaseRevoked') ORDER BY log_order, n
"""
# The SDK uses the event id as the idempotency key when the agent gives none.
UNKEYED = """
SELECT agent_id, count(*) FROM events
WHERE idempotency_key = event_id::text AND stream NOT LIKE 'lease-%%' AND stream NOT LIKE 'agent-%%'
  AND stream NOT LIKE 'ops-%%'
GROUP BY agent_id
"""
PUBLISHERS = "SELECT name, position FROM publisher_checkpoints ORDER BY name"
OLDEST_UNPUBLISHED_AGE = (
    "SELECT extract(epoch FROM clock_timestamp() - recorded_at)::float8 FROM events WHERE position = %s"
)
# The kill switch revokes leases as the coordinator does (role eventstore_coordinator, migration 0005):
# a login without those rights cannot stop an agent.
KILL_REACHABLE = (
    "SELECT has_table_privilege('agents', 'UPDATE') AND has_table_privilege('lease_holders', 'DELETE')"
)
KILLED = "SELECT agent_id FROM agents WHERE status = 'killed' ORDER BY agent_id"
KILLED_HOLDING = """
SELECT DISTINCT h.agent_id FROM lease_holders h JOIN agents a USING (agent_id)
WHERE a.status = 'killed' ORDER BY 1
"""
TABLE_EXISTS = "SELECT to_regclass(%s) IS NOT NULL"
GUARD_TABLES = ("guarded_streams",)  # migration 0005


def _one(conn: Connection, query: str | sql.Composed, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def gather(conn: Connection, settings: Settings) -> Evidence:
    """Measure every control (read only; the hash-chain walk is the slow part on a long log)."""
    e = Evidence(alert_sink=_masked(settings.alert_webhook))
    e.resources, e.writer_agents = conn.execute(MAP, ()).fetchone() or (0, 0)
    if _one(conn, TABLE_EXISTS, ("inventory",)):
        e.models_checked.append("inventory")
        e.model_rows = int(_one(conn, INVENTORY_ROWS))
        for sku, f_q, t_q, f_v, t_v in conn.execute(INVENTORY_FOLD, ()).fetchall():
            e.model_mismatches.append(
                f"inventory {sku}: table has quantity {t_q} at version {t_v}, the log folds to {f_q} at version {f_v}")
    grants, mode_ttl, max_ttl = conn.execute(GRANTS).fetchone() or (0, None, None)
    e.lease_grants, e.default_ttl, e.max_ttl = int(grants), mode_ttl, max_ttl
    for table in GUARD_TABLES:
        if _one(conn, TABLE_EXISTS, (table,)):
            e.guarded_patterns = int(_one(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))))
            break
    e.order_refused = int(_one(conn, COUNT_TYPE, ("LockOrderViolated",)))
    with conn.cursor() as cur:  # streamed row by row: the lock history can be long
        e.order_let_through = lock_order_let_through(
            (str(t), str(a), str(r), int(k)) for t, a, r, k in cur.stream(LOCK_HISTORY))
    e.unkeyed_by_agent = {str(a): int(n) for a, n in conn.execute(UNKEYED, ()).fetchall()}
    with conn.cursor() as cur:
        e.head = head_position(cur)
    e.publishers = {str(n): e.head - int(p) for n, p in conn.execute(PUBLISHERS).fetchall()}
    if e.publishers:
        behind = max(e.publishers.values())
        e.publisher_lag_seconds = 0.0 if behind <= 0 else float(
            _one(conn, OLDEST_UNPUBLISHED_AGE, (e.head - behind + 1,)) or 0.0)
    e.deadlocks_found = int(_one(conn, COUNT_TYPE, ("DeadlockFound",)))
    e.waits_exceeded = int(_one(conn, COUNT_TYPE, ("WaitExceeded",)))
    e.kill_switch_reachable = bool(_one(conn, KILL_REACHABLE))
    e.killed_agents = [str(r[0]) for r in conn.execute(KILLED).fetchall()]
    e.killed_holding = [str(r[0]) for r in conn.execute(KILLED_HOLDING).fetchall()]
    with conn.cursor() as cur:
        report = verify_chain(cur)
    e.chain_ok, e.chain_checked, e.chain_problem = report.ok, report.checked, report.problem
    e.chain_bad_position = report.first_bad_position
    if not conn.autocommit:
        conn.rollback()
    return e


def _masked(url: str | None) -> str | None:
    """The alert sink without credentials or path (it may embed a secret), e.g. https://hooks.example."""
    if url is None:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")
