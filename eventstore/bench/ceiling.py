"""The raw PostgreSQL ceiling for the write path, measured on the same server as the system.

Two references, both durable commits (stock ``synchronous_commit``):

- ``unnest``: batches of 1,000 events, one transaction each, shaped like the projector's append
  (eventstore/postgres/eventlog.py): create missing stream rows, lock them (sorted, ``FOR UPDATE``),
  lock the log head, check versions, ``INSERT ... SELECT FROM unnest(...)`` with binary parameters
  (psycopg ``%b``) into an events table with the same unique keys (position, stream+version,
  idempotency key, event id), move the streams and the head. No hash chain, no read model, no outcome
  rows: what PostgreSQL alone can take with the same locking and constraints.
- ``copy``: binary ``COPY`` of 10,000 rows per transaction into a staging table of the same columns.

The tables live in their own schema, dropped afterwards.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

SCHEMA = "bench_ceiling"
DDL = f"""
DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;
CREATE SCHEMA {SCHEMA};
CREATE TABLE {SCHEMA}.head (id int PRIMARY KEY, position bigint NOT NULL);
INSERT INTO {SCHEMA}.head VALUES (1, 0);
CREATE TABLE {SCHEMA}.streams (stream text PRIMARY KEY, version bigint NOT NULL);
CREATE TABLE {SCHEMA}.events (
    position bigint PRIMARY KEY, event_id uuid NOT NULL UNIQUE, stream text NOT NULL, version bigint NOT NULL,
    type text NOT NULL, payload jsonb NOT NULL, agent_id text NOT NULL, idempotency_key text NOT NULL UNIQUE,
    occurred_at timestamptz NOT NULL, recorded_at timestamptz NOT NULL, UNIQUE (stream, version));
CREATE TABLE {SCHEMA}.staging (
    event_id uuid, stream text, type text, payload jsonb, agent_id text, idempotency_key text,
    occurred_at timestamptz);
"""
ENSURE = (f"INSERT INTO {SCHEMA}.streams SELECT s, 0 FROM unnest(%b::text[]) AS s ORDER BY s "
          "ON CONFLICT (stream) DO NOTHING")
LOCK = f"SELECT stream, version FROM {SCHEMA}.streams WHERE stream = ANY(%b::text[]) ORDER BY stream FOR UPDATE"
HEAD = f"SELECT position, clock_timestamp() FROM {SCHEMA}.head FOR UPDATE"
INSERT = f"""
INSERT INTO {SCHEMA}.events (position, event_id, stream, version, type, payload, agent_id, idempotency_key,
                             occurred_at, recorded_at)
SELECT p, e, s, v, t, pl::jsonb, a, k, o, %b::timestamptz
FROM unnest(%b::bigint[], %b::uuid[], %b::text[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[],
            %b::timestamptz[]) AS x(p, e, s, v, t, pl, a, k, o)
"""
SET_VERSIONS = (f"UPDATE {SCHEMA}.streams SET version = v.version FROM unnest(%b::text[], %b::bigint[]) "
                f"AS v(stream, version) WHERE streams.stream = v.stream")
MOVE_HEAD = f"UPDATE {SCHEMA}.head SET position = %b"
COPY = f"COPY {SCHEMA}.staging (event_id, stream, type, payload, agent_id, idempotency_key, occurred_at) " \
       "FROM STDIN (FORMAT BINARY)"
COPY_TYPES = ["uuid", "text", "text", "jsonb", "text", "text", "timestamptz"]
COPY_EVENTS = (f"COPY {SCHEMA}.events (position, event_id, stream, version, type, payload, agent_id, "
               "idempotency_key, occurred_at, recorded_at) FROM STDIN (FORMAT BINARY)")
COPY_EVENTS_TYPES = ["int8", "uuid", "text", "int8", "text", "jsonb", "text", "text", "timestamptz", "timestamptz"]


@dataclass(frozen=True)
class Ceiling:
    """Rows per second for each reference, and its conditions."""

    unnest_rate: float
    unnest_rows: int
    copy_rate: float
    copy_rows: int
    copy_events_rate: float

    def lines(self) -> list[str]:
        return [f"raw PostgreSQL, unnest batches of 1,000 (binary params, version check): "
                f"{self.unnest_rate:>9,.0f} events/s ({self.unnest_rows:,} events)",
                f"raw PostgreSQL, binary COPY of 10,000 rows per transaction:             "
                f"{self.copy_rate:>9,.0f} rows/s ({self.copy_rows:,} rows, staging table without indexes)",
                f"raw PostgreSQL, binary COPY of 10,000 rows into the indexed events table: "
                f"{self.copy_events_rate:>9,.0f} rows/s ({self.copy_rows:,} rows; positions, versions given)"]


def _rows(n: int, seed: int) -> list[tuple[uuid.UUID, str, str, str, str, datetime]]:
    rnd = random.Random(seed)
    now = datetime.now(UTC)
    out = []
    for _ in range(n):
        sku = f"c-{rnd.randrange(1000):04d}"
        eid = uuid.uuid4()
        out.append((eid, f"inventory-{sku}", "InventoryAdjusted",
                    json.dumps({"sku": sku, "delta": rnd.randint(-5, 9)}), "bench-agent", now))
    return out


def unnest_batches(conn: psycopg.Connection[Any], events: int, batch: int = 1000) -> float:
    """Events per second through the projector-shaped batch transaction."""
    rows = _rows(events, seed=1)
    t0 = time.perf_counter()
    with conn.cursor() as cur:
        for start in range(0, events, batch):
            chunk = rows[start:start + batch]
            names = sorted({r[1] for r in chunk})
            cur.execute(ENSURE, (names,))
            cur.execute(LOCK, (names,))
            versions = {s: int(v) for s, v in cur.fetchall()}
            cur.execute(HEAD)
            head_row = cur.fetchone()
            head, recorded_at = (int(head_row[0]), head_row[1]) if head_row else (0, None)
            vs = []
            for r in chunk:
                versions[r[1]] += 1
                vs.append(versions[r[1]])
            cur.execute(INSERT, (recorded_at, list(range(head + 1, head + 1 + len(chunk))),
                                 [r[0] for r in chunk], [r[1] for r in chunk], vs, [r[2] for r in chunk],
                                 [r[3] for r in chunk], [r[4] for r in chunk], [str(r[0]) for r in chunk],
                                 [r[5] for r in chunk]))
            cur.execute(SET_VERSIONS, (list(versions), list(versions.values())))
            cur.execute(MOVE_HEAD, (head + len(chunk),))
            conn.commit()
    return events / (time.perf_counter() - t0)


def copy_batches(conn: psycopg.Connection[Any], rows_total: int, batch: int = 10_000) -> float:
    """Rows per second through binary COPY, one transaction per batch."""
    rows = [(r[0], r[1], r[2], r[3], r[4], str(r[0]), r[5]) for r in _rows(rows_total, seed=2)]
    t0 = time.perf_counter()
    with conn.cursor() as cur:
        for start in range(0, rows_total, batch):
            with cur.copy(COPY) as cp:
                cp.set_types(COPY_TYPES)
                for r in rows[start:start + batch]:
                    cp.write_row(r)
            conn.commit()
    return rows_total / (time.perf_counter() - t0)


def copy_events(conn: psycopg.Connection[Any], rows_total: int, batch: int = 10_000) -> float:
    """Rows per second through binary COPY straight into the indexed events table (positions and
    versions computed by the client, the head row moved per batch), one transaction per batch."""
    versions: dict[str, int] = {}
    rows: list[tuple[Any, ...]] = []
    for r in _rows(rows_total, seed=3):
        versions[r[1]] = versions.get(r[1], 0) + 1
        rows.append((r[0], r[1], versions[r[1]], r[2], r[3], r[4], str(r[0]), r[5]))
    t0 = time.perf_counter()
    with conn.cursor() as cur:
        for start in range(0, rows_total, batch):
            cur.execute(HEAD)
            head_row = cur.fetchone()
            head, recorded_at = (int(head_row[0]), head_row[1]) if head_row else (0, None)
            chunk = rows[start:start + batch]
            with cur.copy(COPY_EVENTS) as cp:
                cp.set_types(COPY_EVENTS_TYPES)
                for i, r in enumerate(chunk, start=1):
                    cp.write_row((head + i, *r, recorded_at))
            cur.execute(MOVE_HEAD, (head + len(chunk),))
            conn.commit()
    return rows_total / (time.perf_counter() - t0)


def measure(url: str, events: int = 50_000, copy_rows: int = 100_000) -> Ceiling:
    """Create the reference tables, run both references, drop the tables."""
    with psycopg.connect(url) as conn:
        conn.execute(DDL)
        conn.commit()
        try:
            unnest_batches(conn, min(5000, events))  # warm caches and plans; then start from empty again
            conn.execute(f"TRUNCATE {SCHEMA}.events, {SCHEMA}.streams; UPDATE {SCHEMA}.head SET position = 0")
            conn.commit()
            unnest = unnest_batches(conn, events)
            copy = copy_batches(conn, copy_rows)
            conn.execute(f"TRUNCATE {SCHEMA}.events, {SCHEMA}.streams; UPDATE {SCHEMA}.head SET position = 0")
            conn.commit()
            copy_ev = copy_events(conn, copy_rows)
        finally:
            conn.rollback()
            conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
            conn.commit()
    return Ceiling(unnest, events, copy, copy_rows, copy_ev)
