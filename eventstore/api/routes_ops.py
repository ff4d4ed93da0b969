"""Operator routes: the check, agents and the kill switch, leases and waiters, lag, health."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Path, Query, Request, Response
from psycopg.rows import dict_row

from eventstore.api.auth import Auditor, Operator
from eventstore.api.lag import intake_lag, publisher_lag, readiness
from eventstore.api.state import http_error, state
from eventstore.core.checks import evaluate, summary
from eventstore.core.errors import EventStoreError, LeaseNotHeldError
from eventstore.core.validation import check_name
from eventstore.postgres import leaserelease
from eventstore.postgres.evidence import gather

router = APIRouter(tags=["operations"])
CHECK_CACHE_SECONDS = 5.0
AgentId = Annotated[str, Path(min_length=1, max_length=200)]
# Every agent that ever wrote (a skip scan over events(agent_id, position), fast on a long log) or
# that the coordinator knows, with its kill-switch state and the leases it holds now.
AGENTS = """
WITH RECURSIVE w(id) AS (
    SELECT min(agent_id) FROM events
    UNION ALL
    SELECT (SELECT min(agent_id) FROM events WHERE agent_id > w.id) FROM w WHERE w.id IS NOT NULL
), ids AS (SELECT id FROM w WHERE id IS NOT NULL UNION SELECT agent_id FROM agents)
SELECT ids.id AS agent_id, coalesce(a.status, 'active') AS status, a.reason, a.changed_at,
       coalesce((SELECT array_agg(h.resource ORDER BY h.resource) FROM lease_holders h WHERE h.agent_id = ids.id),
                '{}') AS leases
FROM ids LEFT JOIN agents a ON a.agent_id = ids.id ORDER BY ids.id LIMIT 1000
"""
HOLDERS = """
SELECT resource, agent_id, mode, token, hold_count, ttl_seconds, granted_at, expires_at,
       expires_at <= clock_timestamp() AS expired FROM lease_holders ORDER BY resource, agent_id LIMIT 1000
"""
WAITERS = """
SELECT resource, agent_id, mode, seq, enqueued_at,
       extract(epoch FROM clock_timestamp() - enqueued_at)::float8 AS waiting_seconds, expected_seconds, alerted
FROM lease_waiters ORDER BY resource, seq LIMIT 1000
"""
TOKEN_OF = "SELECT token FROM lease_holders WHERE resource = %s AND agent_id = %s"


def _rows(request: Request, query: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with state(request).conn() as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall()


@router.get("/healthz", tags=["health"], summary="The API process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], summary="Migrated, projector and publishers caught up")
def readyz(request: Request, response: Response) -> dict[str, Any]:
    try:
        with state(request).conn() as conn:
            ok, reasons = readiness(conn, state(request).settings)
    except EventStoreError as e:
        ok, reasons = False, [str(e)]
    response.status_code = 200 if ok else 503
    return {"ready": ok, "reasons": reasons}


@router.get("/api/check", summary="The founding document's checklist, computed from the live deployment")
def check(request: Request, _who: Auditor) -> dict[str, Any]:
    """Computed at most every ``CHECK_CACHE_SECONDS`` (the hash-chain walk reads the whole log);
    ``computed_at`` says when."""
    st = state(request)
    with st.check_lock:
        cached = st.check_cache
        if cached is not None and time.monotonic() - cached[0] < CHECK_CACHE_SECONDS:
            return cached[1]
        try:
            with st.conn() as conn:
                evidence = gather(conn, st.settings)
                computed_at = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        except EventStoreError as e:
            raise http_error(e) from e
        lines = evaluate(evidence, st.settings)
        result = {"ok": all(ln.ok for ln in lines), "summary": summary(lines), "computed_at": computed_at,
                  "controls": [{"control": ln.control, "ok": ln.ok, "detail": ln.detail, "line": ln.render()}
                               for ln in lines]}
        st.check_cache = (time.monotonic(), result)
        return result


@router.get("/api/agents", summary="Agents, their kill-switch state and the leases they hold")
def agents(request: Request, _who: Auditor) -> dict[str, Any]:
    try:
        return {"agents": _rows(request, AGENTS)}
    except EventStoreError as e:
        raise http_error(e) from e


@router.post("/api/agents/{agent_id}/kill", summary="Kill switch: revoke the agent's leases, reject its events")
def kill(request: Request, who: Operator, agent_id: AgentId,
         reason: Annotated[str, Body(embed=True, min_length=1, max_length=500)]) -> dict[str, Any]:
    try:
        check_name("agent_id", agent_id)
        check_name("reason", reason)
        revoked = state(request).coordinator().kill(agent_id, f"{reason} (by {who.name})")
    except EventStoreError as e:
        raise http_error(e) from e
    return {"agent_id": agent_id, "status": "killed", "revoked": revoked}


@router.post("/api/agents/{agent_id}/revive", summary="Let a killed agent work again")
def revive(request: Request, _who: Operator, agent_id: AgentId) -> dict[str, Any]:
    try:
        check_name("agent_id", agent_id)
        known = state(request).coordinator().revive(agent_id)
    except EventStoreError as e:
        raise http_error(e) from e
    if not known:
        raise HTTPException(404, f"agent {agent_id!r} is not known to the coordinator")
    return {"agent_id": agent_id, "status": "active"}


@router.get("/api/leases", summary="Current lease holders and waiters")
def leases(request: Request, _who: Auditor) -> dict[str, Any]:
    try:
        return {"holders": _rows(request, HOLDERS), "waiters": _rows(request, WAITERS)}
    except EventStoreError as e:
        raise http_error(e) from e


@router.post("/api/leases/{resource}/release", summary="Release a holder's lease (recorded as its release)")
def release(request: Request, _who: Operator, resource: Annotated[str, Path(min_length=1, max_length=200)],
            agent_id: Annotated[str, Query(min_length=1, max_length=200)]) -> dict[str, Any]:
    try:
        check_name("resource", resource)
        check_name("agent_id", agent_id)
        rows = _rows(request, TOKEN_OF, (resource, agent_id))
        if not rows:
            return {"released": False, "reason": f"{agent_id!r} holds no lease on {resource!r}"}
        token = int(rows[0]["token"])
        coord = state(request).coordinator()
        coord.run_step(lambda cur: leaserelease.release(cur, resource, agent_id, token))
    except LeaseNotHeldError as e:
        return {"released": False, "reason": str(e)}
    except EventStoreError as e:
        raise http_error(e) from e
    return {"released": True, "resource": resource, "agent_id": agent_id, "token": token}


@router.get("/api/lag", summary="Projector lag per intake partition and publisher lag behind the log head")
def lag(request: Request, _who: Auditor) -> dict[str, Any]:
    st = state(request)
    try:
        with st.conn() as conn:
            intake = intake_lag(conn, st.settings)
            pubs = publisher_lag(conn)
    except EventStoreError as e:
        raise http_error(e) from e
    return {"projector": None if intake is None else {str(p): n for p, n in intake.items()},
            "publishers": pubs}
