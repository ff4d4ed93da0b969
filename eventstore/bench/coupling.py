"""Lease latency while the write path is busy: how much coordination and event intake slow each other.

Before migration 0009 a lease appended its lock events to the event log under the same log-head lock as
the projector's batches; now they go to the lock chain, and what is left of the coupling is sharing the
machine (CPU, the WAL and its flushes) with the write path. Here one agent emits at a steady rate
(``emit_many`` every 10 ms) into a projector process while this process takes uncontended leases; the
same leases are timed with the projector idle first, in the same run.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg

from eventstore.bench import agents as bench_agents
from eventstore.bench.launch import head
from eventstore.bench.writepath import make_events, projector
from eventstore.coordination import Coordinator
from eventstore.core.settings import Settings


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1e3 if ordered else float("nan")


def _leases(c: Coordinator, until: threading.Event | None, n: int) -> list[float]:
    lat: list[float] = []
    while (until is None and len(lat) < n) or (until is not None and not until.is_set()):
        t = time.perf_counter()
        c.acquire("bench:coupling", agent_id="coupling", wait=0).release()
        lat.append(time.perf_counter() - t)
    return lat


def measure(settings: Settings, logdir: Path, rate: int = 5000, seconds: float = 10.0) -> list[str]:
    """Lease p50/p99 idle and under a write load of ``rate`` events/s; printable lines."""
    url = settings.require_database()
    with projector(settings, "process", logdir / "projector-coupling.log"), \
            bench_agents.client("bench-coupling", settings) as client, Coordinator(url, pool_size=2) as coord, \
            psycopg.connect(url, autocommit=True) as conn:
        warm_event, warm_stream = make_events(1, "cw", seed=1)[0]
        client.emit_and_wait(warm_event, warm_stream, timeout=90)
        _leases(coord, None, 50)
        idle = _leases(coord, None, 300)
        events = make_events(int(rate * seconds), "cl", seed=rate)
        done = threading.Event()
        start_pos = head(conn)

        def emit() -> None:
            per_tick = max(1, rate // 100)
            t0 = time.perf_counter()
            for i in range(0, len(events), per_tick):
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                client.emit_many(events[i:i + per_tick])
            done.set()

        emitter = threading.Thread(target=emit, name="coupling-emitter")
        t0 = time.perf_counter()
        emitter.start()
        busy = _leases(coord, done, 0)
        emitter.join()
        committed = head(conn) - start_pos
        elapsed = time.perf_counter() - t0
    busy_p50 = _pct(busy, 0.5)
    return [
        f"lease acquire+release, projector idle : p50 {_pct(idle, 0.5):6.2f} ms  p99 {_pct(idle, 0.99):6.2f} ms "
        f"(n={len(idle)})",
        f"lease acquire+release, write path busy: p50 {_pct(busy, 0.5):6.2f} ms  p99 {_pct(busy, 0.99):6.2f} ms "
        f"(n={len(busy)}) while {committed:,} events committed in {elapsed:.1f} s "
        f"= {committed / elapsed:,.0f} events/s (target {rate:,}/s)",
        f"goal lease p50 <= 5 ms while the write path runs: {'met' if busy_p50 <= 5.0 else 'NOT met'} "
        f"({busy_p50:.2f} ms)",
        f"coupling: busy/idle p50 {_pct(busy, 0.5) / _pct(idle, 0.5):.1f}x, p99 "
        f"{_pct(busy, 0.99) / _pct(idle, 0.99):.1f}x",
    ]
