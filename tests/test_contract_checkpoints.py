"""The checkpoint contract (consumers/checkpoints.py), run against every implementation: memory,
callback (the user's own storage), SQLite and PostgreSQL (a real server)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from consumers.checkpoints import (
    CallbackCheckpoint,
    Checkpoint,
    MemoryCheckpoint,
    PostgresCheckpoint,
    SQLiteCheckpoint,
)

# A factory makes the checkpoint of a group; durable ones return a fresh object over the same storage,
# as a restarted process would.
Factory = Callable[[str], Checkpoint]


@pytest.fixture(params=["memory", "callback", "sqlite", "postgres"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    kind = request.param
    opened: list[SQLiteCheckpoint] = []
    if kind == "memory":
        mem: dict[str, MemoryCheckpoint] = {}
        yield lambda g: mem.setdefault(g, MemoryCheckpoint())
    elif kind == "callback":
        store: dict[str, int] = {}

        def callback(g: str) -> Checkpoint:
            return CallbackCheckpoint(lambda: store.get(g, 0), lambda p: store.__setitem__(g, p))

        yield callback
    elif kind == "sqlite":
        def sqlite(g: str) -> Checkpoint:
            cp = SQLiteCheckpoint(tmp_path / "checkpoints.db", g)
            opened.append(cp)
            return cp

        yield sqlite
    else:
        url: str = request.getfixturevalue("database_url")
        yield lambda g: PostgresCheckpoint(url, g)
    for cp in opened:
        cp.close()


def test_a_new_group_starts_at_zero(make: Factory) -> None:
    cp = make("fresh")
    assert isinstance(cp, Checkpoint)
    assert cp.load() == 0


def test_save_then_load_and_overwrite(make: Factory) -> None:
    cp = make("g")
    cp.save(7)
    assert cp.load() == 7
    cp.save(12)
    assert cp.load() == 12


def test_a_restarted_reader_resumes_where_it_saved(make: Factory) -> None:
    make("g").save(41)
    assert make("g").load() == 41


def test_groups_are_independent(make: Factory) -> None:
    make("a").save(3)
    make("b").save(9)
    assert (make("a").load(), make("b").load(), make("c").load()) == (3, 9, 0)


def test_large_positions_round_trip(make: Factory) -> None:
    cp = make("big")
    cp.save(2**62)
    assert make("big").load() == 2**62


def test_postgres_checkpoint_commits_with_the_effects_or_not_at_all(database_url: str) -> None:
    """Why the PostgreSQL checkpoint exists: saved in the effects' transaction, a rollback undoes both."""
    cp = PostgresCheckpoint(database_url, "effects")
    with psycopg.connect(database_url) as conn:
        conn.execute("CREATE TABLE effect (n int)")
        conn.commit()
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("INSERT INTO effect VALUES (1)")
            cp.save_in(cur, 5)
        with pytest.raises(RuntimeError), conn.transaction(), conn.cursor() as cur:
            cur.execute("INSERT INTO effect VALUES (2)")
            cp.save_in(cur, 6)
            raise RuntimeError("crash before commit")
        assert conn.execute("SELECT count(*) FROM effect").fetchone() == (1,)
    assert cp.load() == 5
