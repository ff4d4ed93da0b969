"""Blue/green rebuild of a read model on real servers (promise 6): exact swap under a live write load,
the projector (and any prepared statement) writing into the swapped-in table, repeated rebuilds."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql

from eventstore import AgentClient, Projector
from eventstore.cli.main import main as cli
from eventstore.core.errors import ConfigurationError, TransientStorageError
from eventstore.core.events import Event
from eventstore.core.exitcodes import EXIT_CONFIG
from eventstore.core.records import DirectEvent
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryAdjusted, InventoryModel, InventoryUpdated, stream_for
from eventstore.postgres.eventlog import append_direct, read_all
from eventstore.postgres.readmodels import apply_all
from eventstore.projection.rebuild import rebuild
from tests.fix_projector import scalar, wait_until

SKUS = [f"S{i:02d}" for i in range(50)]
State = dict[str, tuple[int, int]]


def random_event(rng: random.Random) -> tuple[Event, str]:
    sku = rng.choice(SKUS)
    if rng.random() < 0.2:
        return InventoryUpdated(sku=sku, quantity=rng.randint(0, 100)), stream_for(sku)
    return InventoryAdjusted(sku=sku, delta=rng.randint(-5, 5)), stream_for(sku)


def sequential(database_url: str, upto: int | None = None) -> State:
    """The inventory as the plain in-order application of the log (up to position ``upto``)."""
    state: State = {}
    after = 0
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        while page := read_all(cur, after, 5000):
            for e in page:
                if upto is not None and e.position > upto:
                    return state
                sku = str(e.payload["sku"])
                if e.type == InventoryUpdated.event_type:
                    state[sku] = (int(e.payload["quantity"]), e.version)
                else:
                    state[sku] = (state.get(sku, (0, 0))[0] + int(e.payload["delta"]), e.version)
            after = page[-1].position
    return state


def rows(database_url: str, table: str) -> State:
    with psycopg.connect(database_url) as conn:
        found = conn.execute(sql.SQL("SELECT sku, quantity, version FROM {}").format(sql.Identifier(table)))
        return {str(s): (int(q), int(v)) for s, q, v in found.fetchall()}


def relations(database_url: str, prefix: str) -> set[str]:
    with psycopg.connect(database_url) as conn:
        found = conn.execute("SELECT relname FROM pg_class WHERE relname LIKE %s AND relkind IN ('r', 'i')",
                             (prefix + "%",))
        return {str(r[0]) for r in found.fetchall()}


class Emitter(threading.Thread):
    """An agent emitting a steady stream of inventory events until stopped."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.stop = threading.Event()
        self.emitted = 0
        self.errors: list[BaseException] = []

    def run(self) -> None:
        rng = random.Random(7)
        try:
            with AgentClient("restock-agent", self.settings) as client:
                while not self.stop.is_set():
                    for _ in range(20):
                        client.emit(*random_event(rng))
                        self.emitted += 1
                    client.flush()
                    time.sleep(0.01)
        except BaseException as e:  # surfaced by the test
            self.errors.append(e)


def test_rebuild_under_load_swaps_exactly_and_the_projector_follows(settings: Settings,
                                                                   projector: Projector) -> None:
    db = settings.require_database()
    rng = random.Random(1)
    with AgentClient("seed-agent", settings) as client:
        for _ in range(2000):
            client.emit(*random_event(rng))
        client.flush()
    wait_until(lambda: scalar(db, "SELECT position FROM log_head") == 2000, what="the seed events to commit")
    emitter = Emitter(settings)
    emitter.start()
    wait_until(lambda: emitter.emitted >= 200, what="the emitter to start")
    calls: list[tuple[int, int]] = []
    report = rebuild(db, "inventory", batch=100, progress=lambda done, head: calls.append((done, head)))
    # Keep emitting after the swap, then let the projector drain.
    wait_until(lambda: int(scalar(db, "SELECT position FROM log_head")) > report.head + 300,
               what="events committed after the swap")
    emitter.stop.set()
    emitter.join(30)
    assert not emitter.errors, emitter.errors
    wait_until(lambda: scalar(db, "SELECT position FROM log_head") == emitter.emitted + 2000,
               what="every emitted event to commit")
    final = sequential(db)
    assert rows(db, "inventory") == final  # rebuilt table + everything the projector wrote after the swap
    # The former live table stopped exactly at the swap position: the swap lost and duplicated nothing.
    assert rows(db, "inventory__previous") == sequential(db, upto=report.head)
    assert sequential(db, upto=report.head) != final  # events after the swap did change the new table
    assert report.head > 2000 and report.events == report.applied == report.head
    assert report.previous_table == "inventory__previous" and report.events_per_second > 0
    assert len(calls) > 5 and calls[-1] == (report.head, report.head)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert relations(db, "inventory") == {"inventory", "inventory_pkey", "inventory__previous",
                                          "inventory__previous_pkey"}
    print(f"\nrebuild: {report.summary()}")


def test_unknown_model_names_the_registered_ones(database_url: str, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match=r"unknown read model.*'nope'.*registered: \[.*'inventory'"):
        rebuild(database_url, "nope")
    monkeypatch.setenv("EVENTSTORE_DATABASE_URL", database_url)
    assert cli(["rebuild", "nope"]) == EXIT_CONFIG
    assert "registered" in capsys.readouterr().err
    assert not relations(database_url, "nope")


def test_rebuild_twice_leftovers_and_prepared_statements(database_url: str, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A long-lived writer connection that prepares every statement (as psycopg does after five runs)
    keeps writing into whichever table carries the live name after each swap."""
    rng = random.Random(3)
    model = InventoryModel()
    with psycopg.connect(database_url, prepare_threshold=0) as writer:

        def project(n: int) -> None:  # what the projector does: append and apply in one transaction
            with writer.transaction(), writer.cursor() as cur:
                batch = [DirectEvent(stream, event, "tester") for event, stream in
                         (random_event(rng) for _ in range(n))]
                apply_all(cur, [model], append_direct(cur, batch))

        with writer.transaction(), writer.cursor() as cur:
            model.setup(cur)
        for _ in range(3):
            project(50)
        prepared: Any = writer.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%UPDATE \"inventory\"%'").fetchone()
        writer.commit()
        assert prepared[0] >= 1
        first = rebuild(database_url, "inventory", batch=40)
        assert (first.head, first.events, first.previous_table) == (150, 150, "inventory__previous")
        project(50)
        assert rows(database_url, "inventory") == sequential(database_url)
        with writer.transaction():  # a crashed earlier rebuild left a half-filled table behind
            writer.execute("CREATE TABLE inventory__rebuild (junk int)")
        monkeypatch.setenv("EVENTSTORE_DATABASE_URL", database_url)
        assert cli(["rebuild", "inventory"]) == 0
        assert "swapped at log position 200" in capsys.readouterr().out
        project(50)
    assert rows(database_url, "inventory") == sequential(database_url)
    assert rows(database_url, "inventory__previous") == sequential(database_url, upto=200)
    assert relations(database_url, "inventory") == {"inventory", "inventory_pkey", "inventory__previous",
                                                    "inventory__previous_pkey"}


def test_swap_gives_up_on_a_long_reader_without_touching_the_live_table(database_url: str) -> None:
    """A transaction reading the live table blocks the rename; the rebuild must not hold appenders
    hostage behind the log-head lock: it times out, rolls back and reports it."""
    model = InventoryModel()
    with psycopg.connect(database_url) as writer:
        with writer.transaction(), writer.cursor() as cur:
            model.setup(cur)
            apply_all(cur, [model], append_direct(cur, [DirectEvent(stream_for("A1"), InventoryUpdated(
                sku="A1", quantity=5), "tester")]))
        with psycopg.connect(database_url) as reader, reader.transaction():
            reader.execute("SELECT count(*) FROM inventory").fetchone()  # holds ACCESS SHARE until commit
            started = time.monotonic()
            with pytest.raises(TransientStorageError, match="could not lock table 'inventory'"):
                rebuild(database_url, "inventory", lock_timeout=0.2, attempts=2)
            assert time.monotonic() - started < 5
        with writer.transaction(), writer.cursor() as cur:  # appenders were released
            append_direct(cur, [DirectEvent(stream_for("A1"), InventoryAdjusted(sku="A1", delta=1), "tester")])
    assert rows(database_url, "inventory") == {"A1": (5, 1)}  # untouched (the second event was not applied)
    assert rebuild(database_url, "inventory").previous_table == "inventory__previous"
    assert rows(database_url, "inventory") == sequential(database_url) == {"A1": (6, 2)}
