"""The outcome store contract (eventstore/postgres/outcomes.py: ``OutcomeStore``), run against every
implementation on a real PostgreSQL. Decisions are written as the projector writes them: a committed
event is its row in ``events``, every other decision a row in ``outcomes``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from eventstore.core.outcomes import Outcome, ReasonCode
from eventstore.core.records import DirectEvent
from eventstore.examples.inventory import InventoryAdjusted
from eventstore.postgres import eventlog
from eventstore.postgres.connection import Database
from eventstore.postgres.outcomerecord import INSERT_OUTCOMES
from eventstore.postgres.outcomes import OutcomeStore, PostgresOutcomeStore


@pytest.fixture(params=["postgres"])
def store(request: pytest.FixtureRequest, database_url: str) -> Iterator[OutcomeStore]:
    pool = Database(database_url).pool(min_size=1, max_size=2, name="outcome-contract")
    try:
        yield PostgresOutcomeStore(pool)
    finally:
        pool.close()


def commit(url: str, stream: str) -> tuple[uuid.UUID, int, int]:
    """One committed event: (event id, version, position)."""
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        [ev] = eventlog.append_direct(cur, [DirectEvent(stream, InventoryAdjusted(sku="x", delta=1), "agent")])
    return ev.event_id, ev.version, ev.position


def record(url: str, status: str, stream: str, *, current: int | None = None, original: int | None = None,
           code: ReasonCode, event_id: uuid.UUID | None = None) -> uuid.UUID:
    """One decision that did not commit, as the projector records it."""
    eid = event_id or uuid.uuid4()
    row = (eid, "agent", f"key-{eid}", stream, status, 0, current, original, f"{status} for the test", 0, 1,
           code.value)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(INSERT_OUTCOMES, tuple([col] for col in row))
    return eid


def test_unknown_and_empty_lookups(store: OutcomeStore) -> None:
    assert store.lookup([]) == {}
    assert store.lookup([uuid.uuid4()]) == {}


def test_each_decision_reads_back_with_its_code(store: OutcomeStore, database_url: str) -> None:
    committed, version, position = commit(database_url, "s")
    dup = record(database_url, "duplicate", "s", original=position, code=ReasonCode.DUPLICATE)
    conflict = record(database_url, "conflict", "s", current=version, code=ReasonCode.VERSION_CONFLICT)
    stale = record(database_url, "rejected", "s", current=version, code=ReasonCode.LEASE_STALE)
    found = store.lookup([committed, dup, conflict, stale, uuid.uuid4()])
    assert set(found) == {committed, dup, conflict, stale}
    c = found[committed]
    assert (c.status, c.stream, c.version, c.position, c.reason_code) == (Outcome.COMMITTED, "s", 1, position, None)
    d = found[dup]
    assert (d.status, d.version, d.position, d.reason_code) == (Outcome.DUPLICATE, 1, position, ReasonCode.DUPLICATE)
    k = found[conflict]
    assert (k.status, k.current_version, k.version, k.reason_code) == (
        Outcome.CONFLICT, 1, None, ReasonCode.VERSION_CONFLICT)
    assert found[stale].status is Outcome.REJECTED and found[stale].reason_code is ReasonCode.LEASE_STALE
    assert all(found[i].reason for i in (dup, conflict, stale))


def test_a_committed_row_wins_over_any_other_record_of_the_same_id(store: OutcomeStore, database_url: str) -> None:
    """An event id decided twice (a replay after a crash recorded a late duplicate) reads as committed."""
    committed, _, position = commit(database_url, "w")
    record(database_url, "duplicate", "w", original=position, code=ReasonCode.DUPLICATE, event_id=committed)
    assert store.lookup([committed])[committed].status is Outcome.COMMITTED
