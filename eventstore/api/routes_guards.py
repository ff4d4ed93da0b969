"""Guarded streams over HTTP: list them (auditor), guard and unguard patterns (operator).

The same operator functions as ``eventstore resources guard`` (migration 0005), so every change is
recorded in ``operator_actions`` under the database login that made it, and the API token's name is
kept in the response."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, Request

from eventstore.api.auth import Auditor, Operator
from eventstore.api.state import http_error, state
from eventstore.core.errors import EventStoreError
from eventstore.postgres import agents

router = APIRouter(tags=["operations"])
Pattern = Annotated[str, Body(embed=True, min_length=1, max_length=200)]


@router.get("/api/guards", summary="Guarded stream patterns and the resource whose lease a write needs")
def guards(request: Request, _who: Auditor) -> dict[str, Any]:
    try:
        with state(request).conn() as conn, conn.cursor() as cur:
            return {"guards": [{"pattern": g.pattern, "resource": g.resource} for g in agents.list_guards(cur)]}
    except EventStoreError as e:
        raise http_error(e) from e


@router.post("/api/guards", summary="Guard the streams matching a pattern: writes need the current lease")
def guard(request: Request, who: Operator, pattern: Pattern,
          resource: Annotated[str, Body(embed=True, min_length=1, max_length=200)] = "{stream}") -> dict[str, Any]:
    try:
        with state(request).conn() as conn, conn.transaction(), conn.cursor() as cur:
            g = agents.guard(cur, pattern, resource)
    except EventStoreError as e:
        raise http_error(e) from e
    return {"pattern": g.pattern, "resource": g.resource, "by": who.name}


@router.delete("/api/guards", summary="Stop guarding a pattern")
def unguard(request: Request, who: Operator,
            pattern: Annotated[str, Query(min_length=1, max_length=200)]) -> dict[str, Any]:
    try:
        with state(request).conn() as conn, conn.transaction(), conn.cursor() as cur:
            found = agents.unguard(cur, pattern)
    except EventStoreError as e:
        raise http_error(e) from e
    if not found:
        raise HTTPException(404, f"no guard on pattern {pattern!r}")
    return {"pattern": pattern, "unguarded": True, "by": who.name}
