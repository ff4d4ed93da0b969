"""Migration 0015: ANALYZE skips the event log's payload and hash columns (their statistics target is 0), still
gathers the others, and the downgrade restores the default. ``eventstore bench analyze`` shows the time saved and
that no plan of the project's queries on ``events`` changes."""

from __future__ import annotations

import psycopg

from eventstore.postgres.migrate import upgrade
from tests.fix_projector import scalar
from tests.test_lock_chain import _alembic
from tests.test_migration_0014 import fresh_db  # noqa: F401 (a fixture)

SKIPPED = ("payload", "hash", "prev_hash")


def _targets(url: str) -> dict[str, int | None]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT attname, attstattarget FROM pg_attribute WHERE attrelid = 'events'::regclass "
                            "AND attname = ANY(%s)", ([*SKIPPED, "stream"],)).fetchall()
    return {str(name): None if target is None else int(target) for name, target in rows}


def _analyzed(url: str) -> set[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO agents (agent_id) VALUES ('a') ON CONFLICT DO NOTHING")
        conn.execute("ANALYZE events")
        rows = conn.execute("SELECT attname FROM pg_stats WHERE tablename = 'events'").fetchall()
    return {str(r[0]) for r in rows}


def test_analyze_skips_payload_and_hashes_and_the_downgrade_restores_them(fresh_db: str) -> None:  # noqa: F811
    from eventstore.core.records import DirectEvent
    from eventstore.examples.inventory import InventoryAdjusted
    from eventstore.postgres.eventlog import append_direct

    upgrade(fresh_db)
    with psycopg.connect(fresh_db) as conn, conn.cursor() as cur:
        append_direct(cur, [DirectEvent(f"inventory-{i % 7}", InventoryAdjusted(sku=str(i % 7), delta=i), "a")
                            for i in range(50)])
    assert all(_targets(fresh_db)[c] == 0 for c in SKIPPED)
    analyzed = _analyzed(fresh_db)
    assert "stream" in analyzed and "position" in analyzed and not analyzed & set(SKIPPED)
    _alembic(fresh_db, "downgrade", "0014")
    assert all(_targets(fresh_db)[c] in (None, -1) for c in SKIPPED)
    assert set(SKIPPED) <= _analyzed(fresh_db)
    upgrade(fresh_db)
    assert scalar(fresh_db, "SELECT count(*) FROM events") == 50
