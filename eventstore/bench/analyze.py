"""``eventstore bench analyze``: what ANALYZE of the event log costs with and without statistics on the
columns no query of ours filters, joins or groups on (``payload``, ``hash``, ``prev_hash``; migration
0015 sets their statistics target to 0), and whether any plan of ours changes.

A fresh embedded PostgreSQL, an event log filled with ``--events`` inventory events (through the log's own
append), then rounds alternating the two settings: each times ``ANALYZE events`` five times, and the first
round of each setting EXPLAINs the project's queries on ``events`` (their SQL taken from the modules that
run them, with literal parameters) to compare the plans' shapes (costs left out). PostgreSQL's autoanalyze
of ``events`` after a big drain fell into the latency tail (docs/perf-tail.md); this is its time.
"""

from __future__ import annotations

import os
import platform
import random
import re
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from eventstore.core.records import DirectEvent
from eventstore.embedded import EmbeddedPostgres
from eventstore.examples.inventory import InventoryAdjusted, InventoryUpdated
from eventstore.postgres import eventlog, evidence, history, intake, logreader, outcomes
from eventstore.postgres.migrate import upgrade

COLUMNS = ("payload", "hash", "prev_hash")
SETTINGS = {"statistics on (target -1, the default)": -1, "STATISTICS 0 (migration 0015)": 0}


def fill(url: str, events: int, seed: int = 1) -> None:
    """Append ``events`` inventory events over 2,000 SKUs and 50 agents, 1,000 per transaction."""
    rnd = random.Random(seed)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        for _ in range(max(1, events // 1000)):
            items = []
            for _ in range(1000):
                sku = f"sku-{rnd.randrange(2000)}"
                event = (InventoryUpdated(sku=sku, quantity=rnd.randrange(100)) if rnd.random() < 0.1
                         else InventoryAdjusted(sku=sku, delta=rnd.randrange(-5, 6)))
                items.append(DirectEvent(f"inventory-{sku}", event, f"agent-{rnd.randrange(50)}"))
            eventlog.append_direct(cur, items)
            conn.commit()


def queries(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, Any]]:
    """The project's reads of ``events``, each with parameters that hit rows of the filled log."""
    row = conn.execute("SELECT event_id, agent_id, idempotency_key, correlation_id FROM events "
                       "WHERE position = 1000").fetchone()
    if row is None:
        raise RuntimeError("the event log has fewer than 1,000 events")
    event_id, agent, key, correlation = row
    ids = [event_id, uuid.uuid4()]
    return {
        "eventlog READ_STREAM": (eventlog.READ_STREAM, ("inventory-sku-7", 0, 100)),
        "eventlog READ_ALL": (eventlog.READ_ALL, (100_000, 1000)),
        "eventlog HASH_AT": (eventlog.HASH_AT, (1000,)),
        "eventlog READ_CHAIN": (eventlog.READ_CHAIN, (0, 50_000, 10_000)),
        "logreader READ_COMMITTED_ROWS": (logreader.READ_COMMITTED_ROWS, (1000, 20_000, 1000)),
        "intake COMMITTED_KEYS": (intake.COMMITTED_KEYS.replace("%b", "%s"), ([agent, "agent-1"], [key, "x"])),
        "intake TAKEN_IDS": (intake.TAKEN_IDS.replace("%b", "%s"), (ids,)),
        "outcomes LOOKUP_AGENT_OUTCOMES": (outcomes.LOOKUP_AGENT_OUTCOMES,
                                           {"ids": ids, "agent": agent, "identity": True, "key": None}),
        "history PAGE (stream)": (history.PAGE.format(columns="*", filters=" AND stream = %(stream)s"),
                                  {"after": 0, "limit": 100, "stream": "inventory-sku-7"}),
        "history PAGE (agent, type)": (history.PAGE.format(columns="*",
                                                           filters=" AND agent_id = %(agent)s AND type = %(type)s"),
                                       {"after": 0, "limit": 100, "agent": "agent-3", "type": "InventoryUpdated"}),
        "history CHAIN": (history.CHAIN + "SELECT * FROM chain", {"correlation": correlation}),
        "history WRITERS": (history.WRITERS, None),
        "evidence MAP": (evidence.MAP, None),
        "evidence INVENTORY_FOLD": (evidence.INVENTORY_FOLD, None),
    }


def plan_shapes(conn: psycopg.Connection[Any], qs: dict[str, tuple[str, Any]]) -> dict[str, str]:
    """Each query's plan without its cost figures (literal parameters: the plan a custom plan would get)."""
    out: dict[str, str] = {}
    cur = psycopg.ClientCursor(conn)
    for name, (text, params) in qs.items():
        rows = cur.execute("EXPLAIN " + text, params).fetchall()
        out[name] = "\n".join(re.sub(r"\s*\(cost=[^)]*\)", "", str(r[0])).rstrip() for r in rows)
    return out


def main(events: int = 200_000, rounds: int = 2, repeats: int = 5) -> int:
    """Print ANALYZE's time on ``events`` with both settings, alternated, and whether any plan changes."""
    print(f"eventstore ANALYZE benchmark: {events:,} events, {rounds} alternating rounds x {repeats} ANALYZE per "
          f"setting; statistics target of {', '.join(COLUMNS)}")
    print(f"  machine: {os.cpu_count()} CPUs, {platform.platform()}; load average {os.getloadavg()[0]:.2f} (shared)")
    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="eventstore-bench-analyze-")) / "pg", ephemeral=True)
    url = pg.start()
    try:
        upgrade(url)
        t = time.monotonic()
        fill(url, events)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS inventory (sku text PRIMARY KEY, quantity bigint, version bigint)")
            size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('events'))").fetchone()
            print(f"  filled in {time.monotonic() - t:.1f} s; events table {size[0] if size else '?'}", flush=True)
            conn.execute("CHECKPOINT")
            qs = queries(conn)
            times: dict[str, list[float]] = {s: [] for s in SETTINGS}
            shapes: dict[str, dict[str, str]] = {}
            for r in range(rounds):
                for setting, target in SETTINGS.items():
                    for col in COLUMNS:
                        conn.execute(f"ALTER TABLE events ALTER COLUMN {col} SET STATISTICS {int(target)}")
                    got = []
                    for _ in range(repeats):
                        t0 = time.perf_counter()
                        conn.execute("ANALYZE events")
                        got.append(time.perf_counter() - t0)
                    times[setting] += got
                    median = statistics.median(got) * 1e3
                    print(f"  round {r + 1}, {setting:<40} ANALYZE events median {median:6.1f} ms "
                          f"(min {min(got) * 1e3:.1f}, max {max(got) * 1e3:.1f}); load {os.getloadavg()[0]:.2f}",
                          flush=True)
                    if r == 0:
                        shapes[setting] = plan_shapes(conn, qs)
        (on, on_t), (off, off_t) = times.items()
        ratio = statistics.median(off_t) / statistics.median(on_t)
        print(f"\nANALYZE events, median of {len(on_t)}: {statistics.median(on_t) * 1e3:.1f} ms -> "
              f"{statistics.median(off_t) * 1e3:.1f} ms = {ratio:.2f}x")
        a, b = shapes[on], shapes[off]
        changed = [name for name in qs if a[name] != b[name]]
        print(f"plans of {len(qs)} queries on events: {len(qs) - len(changed)} the same"
              + (f", CHANGED: {', '.join(changed)}" if changed else ""))
        for name in changed:
            print(f"--- {name}, {on}:\n{a[name]}\n--- {off}:\n{b[name]}")
    finally:
        pg.stop()
    return 1 if changed else 0
