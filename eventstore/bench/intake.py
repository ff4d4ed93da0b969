"""``eventstore bench intake``: the projector's batch transaction alone, CPU per event, beside the raw
PostgreSQL ceiling measured in the same run.

Only embedded PostgreSQL runs (no broker, no publisher): N signed ``InventoryAdjusted`` intake values,
built and encoded exactly as the SDK does, go through ``write_batch`` in batches of ``--batch`` (the
projector's default 2,000) with the inventory read model, authentication on. This process's CPU per
event (``time.process_time``: the Python work the projector does per batch) and PostgreSQL's (from
/proc) are printed next to the same figures for the raw ``unnest`` ceiling (eventstore/bench/ceiling.py,
batches of 1,000, no hash chain, no checks), rounds interleaved so a change in load hits both alike.
The collector is set as ``eventstore project`` sets it (core/gcpolicy.py) unless ``default_gc``.
With ``--profile`` a cProfile of one extra round prints the top functions.
"""

from __future__ import annotations

import cProfile
import gc
import io
import os
import platform
import pstats
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from eventstore.bench import ceiling
from eventstore.bench.launch import postmaster_pid
from eventstore.bench.writepath import CpuMeter, make_events
from eventstore.core.auth import Credential
from eventstore.core.events import registry
from eventstore.core.gcpolicy import tune_for_batches
from eventstore.embedded import EmbeddedPostgres
from eventstore.examples.inventory import InventoryModel
from eventstore.postgres.agents import register
from eventstore.postgres.intake import write_batch
from eventstore.postgres.intakebatch import IntakeMessage
from eventstore.postgres.migrate import upgrade
from eventstore.sdk.client import build_envelope
from eventstore.wire.envelope import encode

ROUNDS = 3


@dataclass(frozen=True)
class Round:
    """One measured pass: events, wall seconds, this process's CPU seconds, PostgreSQL's CPU seconds."""

    events: int
    seconds: float
    client_cpu: float
    postgres_cpu: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def us(self, cpu: float) -> float:
        return cpu / self.events * 1e6


def messages(credential: Credential, n: int, prefix: str, seed: int) -> list[IntakeMessage]:
    """n signed intake messages as the SDK produces them (key = stream, value = signed envelope JSON)."""
    out = []
    for i, (event, stream) in enumerate(make_events(n, prefix, seed)):
        env = build_envelope("bench-intake", event, stream, expected_version=None, idempotency_key=None,
                             correlation_id=None, causation_id=None, lease=None)
        key, value, _ = encode(env, credential)
        out.append(IntakeMessage(0, i, key, value))
    return out


def intake_round(conn: psycopg.Connection[Any], msgs: list[IntakeMessage], batch: int, group: str,
                 meter: CpuMeter) -> Round:
    """Commit ``msgs`` through write_batch in batches; every message must come back COMMITTED."""
    models = [InventoryModel()]
    meter.start()
    c0, t0 = time.process_time(), time.perf_counter()
    committed = 0
    for start in range(0, len(msgs), batch):
        r = write_batch(conn, group=group, topic="bench.intake", messages=msgs[start:start + batch],
                        models=models, types=registry)
        committed += len(r.committed)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    meter.stop()
    if committed != len(msgs):
        raise RuntimeError(f"only {committed} of {len(msgs)} events were committed")
    return Round(len(msgs), seconds, cpu, meter.used["postgres"])


def ceiling_round(conn: psycopg.Connection[Any], n: int, meter: CpuMeter) -> Round:
    """The raw unnest reference (batches of 1,000) over n events, on a freshly emptied reference table."""
    conn.execute(f"TRUNCATE {ceiling.SCHEMA}.events, {ceiling.SCHEMA}.streams; "
                 f"UPDATE {ceiling.SCHEMA}.head SET position = 0")
    conn.commit()
    meter.start()
    c0, t0 = time.process_time(), time.perf_counter()
    ceiling.unnest_batches(conn, n)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    meter.stop()
    return Round(n, seconds, cpu, meter.used["postgres"])


def _median(rounds: list[Round], f: str) -> float:
    return statistics.median(getattr(r, f) if f == "rate" else r.us(getattr(r, f)) for r in rounds)


def main(events: int = 50_000, batch: int = 2000, profile: bool = False, default_gc: bool = False) -> int:
    """Interleave ROUNDS rounds of write_batch and of the raw ceiling; print medians and ratios."""
    if not default_gc:
        tune_for_batches()
    tmp = Path(tempfile.mkdtemp(prefix="eventstore-bench-intake-"))
    pg = EmbeddedPostgres(tmp / "pg", ephemeral=True)
    url = pg.start()
    try:
        upgrade(url)
        with psycopg.connect(url, autocommit=True) as admin:
            credential = register(admin.cursor(), "bench-intake")
            InventoryModel().setup(admin.cursor())
            row = admin.execute("SELECT version(), current_setting('synchronous_commit'), "
                                "current_setting('fsync')").fetchone()
            meter = CpuMeter({"postgres": postmaster_pid(admin)})
        print(f"eventstore bench intake: {events:,} events per round, write_batch batches of {batch:,}, "
              f"{ROUNDS} interleaved rounds (medians)")
        print(f"  machine   : {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}; "
              f"load average {os.getloadavg()[0]:.2f} (shared: ratios of this run count)")
        if row:
            print(f"  PostgreSQL: {row[0].split(',')[0]} embedded (synchronous_commit={row[1]}, fsync={row[2]}); "
                  "authentication on, inventory read model, no broker")
        print(f"  collector : {'CPython defaults' if default_gc else 'as eventstore project sets it'}, "
              f"thresholds {gc.get_threshold()}")
        ours: list[Round] = []
        raw: list[Round] = []
        with psycopg.connect(url) as conn, psycopg.connect(url) as ref:
            ref.execute(ceiling.DDL)
            ref.commit()
            intake_round(conn, messages(credential, min(events, 2 * batch), "w", seed=99), batch, "bench-warm", meter)
            ceiling.unnest_batches(ref, min(events, 5000))
            for r in range(ROUNDS):
                msgs = messages(credential, events, f"r{r}", seed=r)
                ours.append(intake_round(conn, msgs, batch, f"bench-{r}", meter))
                raw.append(ceiling_round(ref, events, meter))
            if profile:
                msgs = messages(credential, events, "prof", seed=42)
                prof = cProfile.Profile()
                prof.enable()
                intake_round(conn, msgs, batch, "bench-prof", meter)
                prof.disable()
            ref.execute(f"DROP SCHEMA {ceiling.SCHEMA} CASCADE")
            ref.commit()
        c_ours, c_raw = _median(ours, "client_cpu"), _median(raw, "client_cpu")
        p_ours, p_raw = _median(ours, "postgres_cpu"), _median(raw, "postgres_cpu")
        r_ours, r_raw = _median(ours, "rate"), _median(raw, "rate")
        print(f"  write_batch (projector's transaction): {r_ours:>9,.0f} events/s; CPU per event: this process "
              f"{c_ours:5.1f} us (aim <= 25), PostgreSQL {p_ours:5.1f} us")
        print(f"  raw unnest ceiling (batches of 1,000):  {r_raw:>9,.0f} events/s; CPU per event: this process "
              f"{c_raw:5.1f} us, PostgreSQL {p_raw:5.1f} us")
        print(f"  ratios write_batch / ceiling: rate {r_ours / r_raw:.2f}x, client CPU {c_ours / c_raw:.1f}x, "
              f"PostgreSQL CPU {p_ours / p_raw:.1f}x; load average now {os.getloadavg()[0]:.2f}")
        if profile:
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
            print(out.getvalue())
    finally:
        pg.stop()
    return 0
