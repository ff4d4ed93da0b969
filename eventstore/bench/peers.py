"""The peer a user would pick instead: the ``eventsourcing`` library with its PostgreSQL recorder,
against the same PostgreSQL server, in the same run as our figures.

Install it with the optional extra: ``pip install -e '.[bench]'``. Without it, the benchmark says so
and carries on. Each save is one durable transaction that checks the aggregate's version (its
optimistic concurrency, like our ``expected_version``); 1 event per save is one agent writing one
event and waiting for it, 10 events per save is the library's batching.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import metadata
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
from psycopg import sql


@dataclass(frozen=True)
class PeerFigures:
    """Events per second of the eventsourcing library, or why it was not measured."""

    one_per_save: float | None
    ten_per_save: float | None
    version: str
    note: str = ""

    def lines(self) -> list[str]:
        if self.one_per_save is None or self.ten_per_save is None:
            return [f"peer (eventsourcing library): not measured: {self.note}"]
        return [f"peer: eventsourcing {self.version} (PostgreSQL recorder), 1 event per save:  "
                f"{self.one_per_save:>9,.0f} events/s",
                f"peer: eventsourcing {self.version} (PostgreSQL recorder), 10 events per save: "
                f"{self.ten_per_save:>9,.0f} events/s"]


def _env(url: str, dbname: str) -> dict[str, str]:
    """The library's settings (environment keys) for a libpq URL, for the database ``dbname``."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "localhost"])[0]
    return {"PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": dbname,
            "POSTGRES_HOST": host, "POSTGRES_PORT": str(parts.port or query.get("port", ["5432"])[0]),
            "POSTGRES_USER": parts.username or "postgres", "POSTGRES_PASSWORD": parts.password or "",
            "CREATE_TABLE": "y", "POSTGRES_POOL_SIZE": "2"}


def measure(url: str, saves: int = 2000) -> PeerFigures:
    """Events per second with 1 and with 10 events per save (``saves`` saves each), in a database of
    its own on the same server, dropped afterwards."""
    try:
        from eventsourcing.application import Application
        from eventsourcing.domain import Aggregate, event
    except ImportError:
        return PeerFigures(None, None, "-", "the 'eventsourcing' package is not installed "
                                             "(pip install -e '.[bench]')")

    class Counter(Aggregate):  # type: ignore[misc,unused-ignore]
        """One stream of the peer: an aggregate whose every event adds a delta."""

        def __init__(self) -> None:
            self.total = 0

        @event("Adjusted")  # type: ignore[misc,untyped-decorator,unused-ignore]
        def adjust(self, delta: int) -> None:
            self.total += delta

    class Counters(Application):  # type: ignore[misc,type-arg,unused-ignore]
        pass

    dbname = "bench_peer_eventsourcing"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(dbname)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    try:
        app: Any = Counters(env=_env(url, dbname))
        try:
            def run(per_save: int, n: int) -> float:
                counters = [Counter() for _ in range(100)]
                for c in counters:
                    app.save(c)
                t0 = time.perf_counter()
                for i in range(n):
                    c = counters[i % len(counters)]
                    for k in range(per_save):
                        c.adjust(delta=k)
                    app.save(c)
                return n * per_save / (time.perf_counter() - t0)

            run(1, 200)  # warm the pool and the plans
            one = run(1, saves)
            ten = run(10, saves // 2)
        finally:
            app.close()
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
    return PeerFigures(one, ten, metadata.version("eventsourcing"))
