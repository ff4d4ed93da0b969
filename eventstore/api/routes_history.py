"""Auditor routes: history queries, the tail of the log (for the live page) and the write map."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from eventstore.api.auth import Auditor
from eventstore.api.state import http_error, state
from eventstore.core.errors import EventStoreError
from eventstore.core.history_query import MAX_LIMIT, HistoryQuery
from eventstore.postgres.history import query, writers

router = APIRouter(prefix="/api", tags=["history"])
Name = Annotated[str | None, Query(max_length=200)]
HEAD = "SELECT position FROM log_head"


@router.get("/history", summary="Committed events by filters, keyset-paginated on the global position")
def history(request: Request, _who: Auditor, stream: Name = None, agent: Name = None,
            type: Name = None,
            since: Annotated[str | None, Query(max_length=64, description="ISO 8601 with zone")] = None,
            until: Annotated[str | None, Query(max_length=64)] = None,
            from_position: int | None = None, to_position: int | None = None,
            correlation: Annotated[str | None, Query(max_length=64)] = None,
            limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
            after: Annotated[str | None, Query(max_length=100)] = None) -> dict[str, Any]:
    """Each event carries the outcomes decided around it and the lock events of its lease."""
    try:
        q = HistoryQuery.create(stream=stream, agent=agent, type=type, since=since, until=until,
                                from_position=from_position, to_position=to_position, correlation=correlation,
                                limit=limit, after=after)
        with state(request).conn() as conn:
            page = query(conn, q)
    except EventStoreError as e:
        raise http_error(e) from e
    return {"events": [{**r.event, "outcomes": r.outcomes, "lock_events": r.lock_events} for r in page.rows],
            "next_cursor": page.next_cursor, "more": page.more}


@router.get("/events/tail", summary="The newest events (after a position), for watching commits")
def tail(request: Request, _who: Auditor,
         after_position: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
         limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50) -> dict[str, Any]:
    try:
        with state(request).conn() as conn:
            head = int(conn.execute(HEAD).fetchone()[0])  # type: ignore[index]
            start = max(0, head - limit) if after_position is None else after_position
            page = query(conn, HistoryQuery.create(from_position=start + 1, limit=limit), context=False)
    except EventStoreError as e:
        raise http_error(e) from e
    return {"head": head, "events": [r.event for r in page.rows]}


@router.get("/writers", summary="Who writes what: resources (stream categories) x agents")
def write_map(request: Request, _who: Auditor) -> dict[str, Any]:
    try:
        with state(request).conn() as conn:
            return {"writers": writers(conn)}
    except EventStoreError as e:
        raise http_error(e) from e
