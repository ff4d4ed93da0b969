"""History query benchmark: latency of a page of 100 by stream, agent, type and correlation id on a
log of 1,000,000 events, and the readiness check's run time on the same log.

Run with ``eventstore bench history [--events N]``. It starts a fresh ephemeral embedded PostgreSQL,
migrates, fills the log directly with ``eventlog.append`` in batches of 2,000 (hash chain included):
20,000 streams in 4 categories, 50 agents, 6 event types and a rare one (1 in 1,000), causal
chains of 5 events per correlation id.
Each query form runs as the API runs it (``postgres.history.query`` with outcomes and lock events
attached). Baselines from the same run: the same queries on the indexes before migration 0007 (its
indexes dropped, 0001's events(recorded_at) recreated, inside a transaction that is rolled back),
and a deep page fetched with OFFSET instead of the cursor.
"""

from __future__ import annotations

import os
import platform
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from eventstore.core.checks import evaluate
from eventstore.core.hashing import canonical_json, intent_hash
from eventstore.core.history_query import HistoryQuery
from eventstore.core.records import NewEvent
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedPostgres
from eventstore.postgres import eventlog
from eventstore.postgres.evidence import gather
from eventstore.postgres.history import query, writers
from eventstore.postgres.migrate import upgrade

BATCH = 2_000  # the projector's default batch: events of one batch share recorded_at
STREAMS = 20_000
AGENTS = 50
CHAIN = 5
TYPES = ("InventoryAdjusted", "InventoryUpdated", "OrderPlaced", "OrderShipped", "PriceSet", "NoteAdded")
RARE = "LimitOverridden"  # one event in 1,000: where an index on type matters most
CATEGORIES = ("inventory", "orders", "prices", "notes")
SAMPLES = 200
BASELINE_SAMPLES = 10
INDEXES = ("events_stream_position_idx", "events_type_position_idx", "events_correlation_idx",
           "events_causation_idx", "events_recorded_at_position_idx")


def fill(conn: psycopg.Connection[Any], n: int) -> tuple[float, list[uuid.UUID]]:
    rnd = random.Random(7)
    versions: dict[str, int] = {}
    correlations: list[uuid.UUID] = []
    t0 = time.perf_counter()
    done, corr, prev = 0, uuid.uuid4(), None
    while done < n:
        k = min(BATCH, n - done)
        batch = []
        for i in range(k):
            if (done + i) % CHAIN == 0:
                corr, prev = uuid.uuid4(), None
                correlations.append(corr)
            stream = f"{CATEGORIES[rnd.randrange(4)]}-{rnd.randrange(STREAMS // 4):05d}"
            versions[stream] = versions.get(stream, 0) + 1
            etype = RARE if rnd.randrange(1000) == 0 else TYPES[rnd.randrange(len(TYPES))]
            payload = canonical_json({"n": done + i, "delta": rnd.randint(-5, 9)})
            eid = uuid.uuid4()
            batch.append(NewEvent(
                event_id=eid, stream=stream, version=versions[stream], type=etype, schema_version=1,
                payload_json=payload, agent_id=f"agent-{rnd.randrange(AGENTS):02d}", idempotency_key=f"k:{eid}",
                correlation_id=corr, causation_id=prev, occurred_at=None, lease_resource=None, fencing_token=None,
                intent=intent_hash(etype, 1, stream, payload)))
            prev = eid
        with conn.transaction(), conn.cursor() as cur:
            eventlog.append(cur, batch)
        done += k
        if done % 100_000 == 0:
            print(f"  {done:,} events ({done / (time.perf_counter() - t0):,.0f}/s)", flush=True)
    with conn.transaction():
        conn.execute("INSERT INTO streams (stream, version) SELECT s, v FROM unnest(%s::text[], %s::bigint[]) "
                     "AS x(s, v)", (list(versions), list(versions.values())))
    conn.execute("VACUUM ANALYZE events")
    return time.perf_counter() - t0, correlations


def load() -> str:
    """The machine's load average (1, 5, 15 min): latency here follows how busy the cores are."""
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def timed(fn: Callable[[], Any], samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def time_range(rnd: random.Random, times: list[Any]) -> HistoryQuery:
    """A random window of about a tenth of the log (database time, recorded_at)."""
    i = rnd.randrange(len(times) - len(times) // 10)
    return HistoryQuery.create(since=times[i], until=times[i + len(times) // 10])


def forms(rnd: random.Random, correlations: list[uuid.UUID],
          times: list[Any]) -> dict[str, Callable[[], HistoryQuery]]:
    return {
        "stream": lambda: HistoryQuery.create(
            stream=f"{CATEGORIES[rnd.randrange(4)]}-{rnd.randrange(STREAMS // 4):05d}"),
        "agent": lambda: HistoryQuery.create(agent=f"agent-{rnd.randrange(AGENTS):02d}",
                                             from_position=rnd.randrange(1, 900_000)),
        "type": lambda: HistoryQuery.create(type=TYPES[rnd.randrange(len(TYPES))],
                                            from_position=rnd.randrange(1, 900_000)),
        "rare type": lambda: HistoryQuery.create(type=RARE, from_position=rnd.randrange(1, 900_000)),
        "time range": lambda: time_range(rnd, times),
        "correlation": lambda: HistoryQuery.create(
            correlation=str(correlations[rnd.randrange(len(correlations))])),
    }


def main(events: int = 1_000_000) -> int:
    if events < 10_000:
        print("bench history: --events must be at least 10,000", file=sys.stderr)
        return 2
    pg = EmbeddedPostgres(data_dir=Path(tempfile.mkdtemp(prefix="eventstore-bench-history-")) / "pg", ephemeral=True)
    url = pg.start()
    try:
        upgrade(url)
        with psycopg.connect(url, autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            print(f"eventstore history benchmark: {events:,} events, {STREAMS:,} streams, {AGENTS} agents, "
                  f"{len(TYPES)} types, chains of {CHAIN}; page of 100; PostgreSQL {version} (embedded, stock "
                  f"settings), Python {platform.python_version()}, {platform.machine()}; one connection, "
                  f"{SAMPLES} samples per form; load average {load()}", flush=True)
            seconds, correlations = fill(conn, events)
            print(f"filled in {seconds:.1f}s ({events / seconds:,.0f} events/s, hash chain included)\n", flush=True)
            rnd = random.Random(11)
            print(f"{'form':<12} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}   "
                  "baseline (schema before 0007) p50 / p99 ms")
            times = [r[0] for r in conn.execute(
                "SELECT recorded_at FROM events WHERE position % 1000 = 1 ORDER BY position").fetchall()]
            for name, make in forms(rnd, correlations, times).items():
                for _ in range(20):  # warm the cache and the plans
                    query(conn, make())
                ms = timed(lambda make=make: query(conn, make()), SAMPLES)  # type: ignore[misc]
                with conn.transaction():
                    for ix in INDEXES:
                        conn.execute(f"DROP INDEX {ix}")  # constant names; rolled back below
                    conn.execute("CREATE INDEX events_recorded_at_idx ON events (recorded_at)")  # as in 0001
                    base = timed(lambda make=make: query(conn, make()), BASELINE_SAMPLES)  # type: ignore[misc]
                    raise psycopg.Rollback()  # the dropped indexes come back
                print(f"{name:<12} {pct(ms, 50):8.2f} {pct(ms, 99):8.2f} {max(ms):8.2f}   "
                      f"{pct(base, 50):8.2f} / {pct(base, 99):.2f}  (x{pct(base, 50) / pct(ms, 50):,.0f} at p50)",
                      flush=True)
            # A deep page: keyset cursor vs OFFSET, same filter, same page.
            deep = events // 12
            q = HistoryQuery.create(type="PriceSet")
            row = conn.execute("SELECT position FROM events WHERE type = 'PriceSet' ORDER BY position "
                               "OFFSET %s LIMIT 1", (deep,)).fetchone()
            after = int(row[0]) if row else 0
            keyset = timed(lambda: query(conn, HistoryQuery.create(type="PriceSet", after=q.next_cursor(after)),
                                         context=False), 50)
            offset = timed(lambda: conn.execute("SELECT * FROM events WHERE type = 'PriceSet' ORDER BY position "
                                                "OFFSET %s LIMIT 100", (deep,)).fetchall(), 10)
            print(f"\ndeep page (type, {deep:,} rows in): cursor p50 {pct(keyset, 50):.2f} ms, OFFSET p50 "
                  f"{pct(offset, 50):.2f} ms (x{pct(offset, 50) / pct(keyset, 50):,.0f})")
            print(f"load average after the queries: {load()}")
            t = time.perf_counter()
            mapped = writers(conn)
            print(f"\nwrite map (eventstore writers) on the same log: {time.perf_counter() - t:.2f}s, "
                  f"{len(mapped)} rows")
            t = time.perf_counter()
            evidence = gather(conn, Settings())
            check_s = time.perf_counter() - t
            lines = evaluate(evidence, Settings())
            print(f"\neventstore check on the same log: {check_s:.1f}s ({sum(ln.ok for ln in lines)}/{len(lines)} "
                  f"controls pass; the hash-chain walk over {evidence.chain_checked:,} events dominates)")
            t = time.perf_counter()
            with conn.cursor() as cur:
                eventlog.verify_chain(cur)
            print(f"verify_chain alone, measured after it: {time.perf_counter() - t:.1f}s")
    finally:
        pg.stop()
    return 0
