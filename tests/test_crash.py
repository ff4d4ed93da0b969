"""Crashes and rebalances: every event in the log and applied exactly once (promises 2 and 5)."""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
import pytest

from eventstore import AgentClient
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryAdjusted, stream_for
from tests.fix_projector import ProjectorProcess, scalar, wait_until

SKUS = 50


def emit_many(settings: Settings, n: int, agent: str = "feeder", start: int = 0) -> None:
    with AgentClient(agent, settings) as c:
        for i in range(start, start + n):
            c.emit(InventoryAdjusted(sku=f"K{i % SKUS}", delta=1), stream_for(f"K{i % SKUS}"),
                   idempotency_key=f"{agent}-{i}")
        c.flush(60)


def assert_exactly_once(db: str, total: int) -> None:
    with psycopg.connect(db) as conn:
        events, keys = conn.execute("SELECT count(*), count(DISTINCT idempotency_key) FROM events").fetchone() or (0, 0)
        assert (events, keys) == (total, total)
        # Each SKU's count equals its stream version: every event applied once, none twice.
        rows = conn.execute("SELECT i.sku, i.quantity, i.version, s.version FROM inventory i "
                            "JOIN streams s ON s.stream = 'inventory-' || i.sku").fetchall()
        assert sum(q for _, q, _, _ in rows) == total
        assert all(q == v == sv for _, q, v, sv in rows)
        gaps = conn.execute("SELECT count(*) FROM (SELECT stream, version, lag(version) OVER "
                            "(PARTITION BY stream ORDER BY version) AS prev FROM events) x "
                            "WHERE prev IS NOT NULL AND version <> prev + 1").fetchone()
        assert gaps == (0,)
        assert conn.execute("SELECT max(position) = count(*) FROM events").fetchone() == (True,)


@pytest.mark.slow
def test_projector_sigkilled_mid_stream_then_restarted_applies_everything_once(
    settings: Settings, spawn_projector: Callable[..., ProjectorProcess]
) -> None:
    db, total = settings.require_database(), 30_000
    emit_many(settings, total)
    first = spawn_projector(EVENTSTORE_BATCH_SIZE="200")
    wait_until(lambda: (scalar(db, "SELECT position FROM log_head") or 0) > total // 10, 60,
               "the first projector to commit some batches")
    first.kill()
    done = scalar(db, "SELECT position FROM log_head")
    assert 0 < done < total, "the kill must land mid-stream for this test to mean anything"
    spawn_projector(EVENTSTORE_BATCH_SIZE="200")
    wait_until(lambda: scalar(db, "SELECT position FROM log_head") == total, 120, "all events committed")
    time.sleep(0.5)  # anything applied twice would show up now
    assert_exactly_once(db, total)


@pytest.mark.slow
def test_two_projectors_in_one_group_one_killed_mid_run(
    settings: Settings, spawn_projector: Callable[..., ProjectorProcess]
) -> None:
    db, total = settings.require_database(), 20_000
    a = spawn_projector(EVENTSTORE_BATCH_SIZE="100")
    b = spawn_projector(EVENTSTORE_BATCH_SIZE="100")
    try:
        wait_until(lambda: bool(a.assignments() and a.assignments()[-1] and b.assignments()
                                and b.assignments()[-1]), 60, "both projectors to own partitions")
    except pytest.fail.Exception:
        logs = "\n".join(a.lines[-20:] + b.lines[-20:])
        pytest.fail(f"assignments: a={a.assignments()} b={b.assignments()}\n{logs}")
    emit_many(settings, total // 2, agent="first-half")
    wait_until(lambda: (scalar(db, "SELECT position FROM log_head") or 0) > total // 8, 90,
               "the group to commit some batches")
    a.kill()
    emit_many(settings, total // 2, agent="second-half")
    wait_until(lambda: scalar(db, "SELECT position FROM log_head") == total, 120,
               "the survivor to take over and commit everything")
    assert sorted(b.assignments()[-1]) == list(range(settings.intake_partitions))
    assert b.proc.poll() is None, "the surviving projector must still be running"
    time.sleep(0.5)
    assert_exactly_once(db, total)


def test_zombie_batch_is_fenced_by_the_stored_offsets(settings: Settings) -> None:
    """Two projector connections hold the same messages, as after a rebalance that the old owner
    missed: both try to commit at once; the offsets row lock lets exactly one apply them."""
    import threading

    from eventstore.core.events import registry
    from eventstore.examples.inventory import InventoryModel
    from eventstore.postgres.intake import write_batch
    from eventstore.postgres.intakebatch import BatchResult, IntakeMessage
    from eventstore.sdk.client import build_envelope
    from eventstore.wire.envelope import encode
    from tests.fix_agents import credential_for

    db = settings.require_database()
    cred = credential_for(db, "z")
    msgs = []
    for off in range(50):
        env = build_envelope("z", InventoryAdjusted(sku="Z", delta=1), stream_for("Z"), expected_version=None,
                             idempotency_key=f"z-{off}", correlation_id=None, causation_id=None, lease=None)
        key, value, _ = encode(env, cred)
        msgs.append(IntakeMessage(0, off, key, value))
    model = InventoryModel()
    with psycopg.connect(db) as conn, conn.transaction(), conn.cursor() as cur:
        model.setup(cur)
    results: list[BatchResult] = []
    barrier = threading.Barrier(2)

    def member() -> None:
        with psycopg.connect(db) as conn:
            barrier.wait()
            results.append(write_batch(conn, group="g", topic="t", messages=msgs, models=[model], types=registry))

    threads = [threading.Thread(target=member) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(len(r.committed) for r in results) == [0, 50]
    assert sorted(r.behind.get(0, -1) for r in results) == [-1, 50]
    assert scalar(db, "SELECT quantity FROM inventory WHERE sku = 'Z'") == 50
    assert scalar(db, "SELECT next_offset FROM consumer_offsets WHERE group_id = 'g'") == 50
    # A later batch that overlaps the applied range applies only the new tail.
    tail = [*msgs[40:], IntakeMessage(0, 50, msgs[0].key, msgs[0].value)]
    with psycopg.connect(db) as conn:
        r = write_batch(conn, group="g", topic="t", messages=tail, models=[model], types=registry)
    assert len(r.committed) == 0 and len(r.results) == 1 and r.results[0].status.value == "duplicate"
