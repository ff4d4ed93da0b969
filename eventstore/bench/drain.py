"""Projector drain: how fast one projector empties a pre-filled intake topic, the agent's cost excluded.

N ``InventoryAdjusted`` envelopes (built and encoded exactly as the SDK does) are produced to a fresh
intake topic first; then a projector process starts and the clock runs from its first committed batch
until the log head is N. CPU seconds per component and peak RSS per process come from /proc.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Producer

from eventstore.bench.writepath import CpuMeter, head, make_events, projector
from eventstore.core.settings import Settings
from eventstore.kafka.config import ensure_topics, producer_config
from eventstore.postgres.agents import register
from eventstore.postgres.connection import connect
from eventstore.sdk.client import build_envelope
from eventstore.wire.envelope import encode

STALL_TIMEOUT = 60.0


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM) in MiB, from /proc; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass(frozen=True)
class Drain:
    """The drain's figures: events, seconds, CPU seconds per component, peak RSS per process (MiB)."""

    events: int
    seconds: float
    fill_seconds: float
    cpu: dict[str, float]
    rss: dict[str, float]
    ok: bool
    detail: str

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def prefill(settings: Settings, n: int) -> float:
    """Produce n SDK-built envelopes to the intake topic; seconds taken (build + encode + produce)."""
    ensure_topics(settings, {settings.intake_topic: settings.intake_partitions})
    # Signed like any agent's envelopes: the projector refuses unsigned ones (authentication is on).
    with connect(settings.require_database(), autocommit=True) as conn, conn.cursor() as cur:
        credential = register(cur, "bench-drain")
    producer = Producer(producer_config(settings, **{"linger.ms": 20, "batch.num.messages": 10_000}))
    t0 = time.perf_counter()
    step = 100_000
    for start in range(0, n, step):
        for event, stream in make_events(min(step, n - start), f"d{start // step}", seed=start):
            env = build_envelope("bench-drain", event, stream, expected_version=None, idempotency_key=None,
                                 correlation_id=None, causation_id=None, lease=None)
            key, value, headers = encode(env, credential)
            while True:
                try:
                    producer.produce(settings.intake_topic, value=value, key=key, headers=headers)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(120)
    if left:
        raise RuntimeError(f"{left} pre-fill messages were not acknowledged by the broker")
    return time.perf_counter() - t0


def drain(settings: Settings, n: int, conn: psycopg.Connection[Any], pids: dict[str, int], logdir: Path) -> Drain:
    """Pre-fill, then time one projector process draining the topic into the log and read model."""
    fill = prefill(settings, n)
    start_pos = head(conn)
    with projector(settings, "process", logdir / "projector-drain.log") as ppid:
        if ppid is None:
            raise RuntimeError("the drain needs a projector process")
        deadline = time.monotonic() + 120
        while head(conn) == start_pos:
            if time.monotonic() > deadline:
                raise RuntimeError("the projector committed nothing within 120 s")
            time.sleep(0.002)
        cpu = CpuMeter({**pids, "projector process": ppid})
        first = head(conn)
        cpu.start()
        t0 = time.perf_counter()
        last, progress_at = first, time.monotonic()
        while (now := head(conn)) < start_pos + n:
            if now > last:
                last, progress_at = now, time.monotonic()
            elif time.monotonic() - progress_at > STALL_TIMEOUT:
                raise RuntimeError(f"drain stalled: {now - start_pos} of {n} committed")
            time.sleep(0.005)
        seconds = time.perf_counter() - t0
        cpu.stop()
        rss = {name: peak_rss_mb(pid) for name, pid in {**pids, "projector process": ppid}.items()}
    row = conn.execute("SELECT count(*) FROM events WHERE position > %s", (start_pos,)).fetchone()
    count = int(row[0]) if row else 0
    ok = count == n
    return Drain(start_pos + n - first, seconds, fill, cpu.used, rss, ok,
                 f"events in log {count} (expected {n})")


def report(d: Drain, ceiling_rate: float | None) -> list[str]:
    """Printable lines: rate, CPU per event by component, peak RSS."""
    lines = [f"projector drain of a pre-filled intake topic: {d.events:,} events in {d.seconds:.2f} s = "
             f"{d.rate:,.0f} events/s (aim >= 40,000/s; pre-fill took {d.fill_seconds:.1f} s, not counted)"]
    if ceiling_rate:
        lines.append(f"  drain / raw unnest ceiling of this run: {d.rate / ceiling_rate:.2f}x (aim >= 0.5x)")
    lines.append("  CPU per event during the drain: " + ", ".join(
        f"{k} {v / d.events * 1e6:.0f} us" for k, v in d.cpu.items()) + f" ({os.cpu_count()} CPUs)")
    lines.append("  peak RSS (VmHWM): " + ", ".join(f"{k} {v:,.0f} MiB" for k, v in d.rss.items()) +
                 " (postgres: the postmaster only)")
    lines.append(f"  correctness: {'PASS' if d.ok else 'FAIL'}: {d.detail}")
    return lines
