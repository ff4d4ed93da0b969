"""Running the lease benchmark's contended agents: as threads of one process, or spread over several processes
as real agents would be (each its own GIL, Coordinator, pool and listener), and checking FIFO in the
database's own order. Used by eventstore/bench/leases.py, which prints both shapes side by side.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from eventstore.bench.launch import postmaster_pid
from eventstore.bench.leasetimeline import fifo_floor_ms
from eventstore.bench.writepath import CpuMeter
from eventstore.coordination import Coordinator


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of the values, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(name: str, lat: list[float], elapsed: float) -> dict[str, float]:
    """Print and return p50/p99 in ms and operations per second."""
    p50, p99 = pct(lat, 0.5) * 1e3, pct(lat, 0.99) * 1e3
    rate = len(lat) / elapsed
    print(f"  {name:<44} n={len(lat):>6}  p50 {p50:7.3f} ms  p99 {p99:7.3f} ms  {rate:9.0f} ops/s")
    return {"p50": p50, "p99": p99, "rate": rate, "mean": sum(lat) / max(len(lat), 1) * 1e3}


def lease_round_on(c: Coordinator, resource: str, agent_id: str) -> list[float]:
    """One acquire+release of ``agent_id`` on ``resource`` (seconds)."""
    t = time.perf_counter()
    c.acquire(resource, agent_id=agent_id, ttl=30, wait=60).release()
    return [time.perf_counter() - t]


def run_threads(agents: int, per_agent: int, body: Callable[[int], list[float]]) -> tuple[list[float], float]:
    """Run ``body(i)`` in ``agents`` threads started together; all latencies and the wall time."""
    results: list[list[float]] = [[] for _ in range(agents)]
    barrier = threading.Barrier(agents + 1)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = body(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(agents)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return [x for r in results for x in r], elapsed


def contended_body(c: Coordinator, i: int, resources: int, per_agent: int, prefix: str) -> list[float]:
    """Agent ``i``: ``per_agent`` acquire+release rounds, moving from resource to resource (seconds each)."""
    lat = []
    for k in range(per_agent):
        resource = f"{prefix}{(i + k) % resources}"
        t = time.perf_counter()
        lease = c.acquire(resource, agent_id=f"agent-{i}", ttl=30, wait=60)
        granted = time.perf_counter()
        lease.release()
        done = time.perf_counter()
        lat.append(done - t)
        GRANTS.append((resource, t, granted))
        RELEASES.append((resource, granted, done))
        if lease.handed_at is not None:
            HANDED.append((resource, lease.handed_at, granted))
    return lat


GRANTS: list[tuple[str, float, float]] = []  # (resource, asked at, granted at) of the last contended run
RELEASES: list[tuple[str, float, float]] = []  # (resource, release called, release returned)
HANDED: list[tuple[str, float, float]] = []  # (resource, hand-off notification received, acquire returned)


def queue_order(url: str, prefix: str) -> tuple[int, int]:
    """FIFO as the database recorded it, from each resource's lock history: count grants that went to anyone
    but the head of a non-empty queue, and the grants checked. Since migration 0013 a wait is chained when
    it ends (a LeaseWaited with its queue place and ``enqueued_at``), so a wait is the span from its queue
    place to its chain position: a grant is past the head when a wait of the same resource that queued
    before it (a smaller place, or for a grant that never queued, an earlier ``enqueued_at`` than the
    grant's ``recorded_at``) was still open at the grant. Older histories (LeaseWaited when a wait began)
    are replayed as a queue. Unlike ``fifo_inversions`` this does not depend on thread clocks."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT stream, type, agent_id, (payload::jsonb ->> 'queue_seq')::bigint, "
            "(payload::jsonb ->> 'enqueued_at')::timestamptz, recorded_at FROM lock_events WHERE stream LIKE %s "
            "AND type IN ('LeaseWaited', 'LeaseGranted', 'LeaseDenied') ORDER BY stream, chain_seq",
            ("lease-" + prefix + "%",)).fetchall()
    by_stream: dict[str, list[tuple[Any, ...]]] = {}
    for row in rows:
        by_stream.setdefault(row[0], []).append(row[1:])
    out_of_order = checked = 0
    for history in by_stream.values():
        spans = any(kind == "LeaseWaited" and seq is not None for kind, _, seq, _, _ in history)
        past, n = (_order_of_spans if spans else _order_of_queue)(history)
        out_of_order += past
        checked += n
    return out_of_order, checked


def _order_of_spans(history: list[tuple[Any, ...]]) -> tuple[int, int]:
    """Grants past the head in one resource's history of waits chained when they end (migration 0013)."""
    waits = [(i, seq, since) for i, (kind, _, seq, since, _) in enumerate(history) if kind == "LeaseWaited"]
    past = checked = 0
    for i, (kind, agent, _, _, at) in enumerate(history):
        if kind != "LeaseGranted":
            continue
        checked += 1
        before = history[i - 1] if i else None
        mine = before[2] if before is not None and before[0] == "LeaseWaited" and before[1] == agent else None
        if any(end > i and (seq < mine if mine is not None else since < at) for end, seq, since in waits):
            past += 1
    return past, checked


def _order_of_queue(history: list[tuple[Any, ...]]) -> tuple[int, int]:
    """Grants past the head in one resource's history of waits chained when they begin (before 0013)."""
    q: list[str] = []
    past = checked = 0
    for kind, agent, *_ in history:
        if kind == "LeaseWaited":
            q.append(agent)
        elif kind == "LeaseDenied":
            if agent in q:
                q.remove(agent)
        else:
            checked += 1
            if q and q[0] != agent:
                past += 1
            if agent in q:
                q.remove(agent)
    return past, checked


def _agents_process(url: str, first: int, count: int, resources: int, per_agent: int, prefix: str,
                    start: Any, out: Any) -> None:
    """One agent process of the multi-process shape: agents ``first`` .. ``first + count - 1`` as threads
    of one Coordinator; warms up, waits for the others, runs, and reports its latencies and CPU seconds."""
    c = Coordinator(url, pool_size=count)
    try:
        run_threads(count, 1, lambda j: lease_round_on(c, f"bench:warm-{prefix}{first + j}", f"agent-{first + j}"))
        start.wait()
        cpu = time.process_time()
        lat, _ = run_threads(count, per_agent, lambda j: contended_body(c, first + j, resources, per_agent, prefix))
        out.put((lat, time.process_time() - cpu))
    finally:
        c.close()


def lease_contended_processes(url: str, agents: int, resources: int, per_agent: int, processes: int,
                              prefix: str, warmed: Callable[[], None] | None = None
                              ) -> tuple[list[float], float, float]:
    """The same contended run with the agents spread over ``processes`` processes (real agents do not share
    one GIL): all latencies, the wall time and the agent processes' CPU seconds."""
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(processes + 1), ctx.Queue()
    per = [agents // processes + (1 if p < agents % processes else 0) for p in range(processes)]
    firsts = [sum(per[:p]) for p in range(processes)]
    procs = [ctx.Process(target=_agents_process, args=(url, firsts[p], per[p], resources, per_agent, prefix, start,
                                                       out), daemon=True) for p in range(processes)]
    for proc in procs:
        proc.start()
    try:
        start.wait(timeout=120)
        if warmed is not None:
            warmed()
        t0 = time.perf_counter()
        lat: list[float] = []
        cpu = 0.0
        for _ in procs:
            part, used = out.get(timeout=600)
            lat += part
            cpu += used
        return lat, time.perf_counter() - t0, cpu
    finally:
        for proc in procs:
            proc.join(timeout=30)


def contended_processes(url: str, per_agent: int, processes: int) -> tuple[str, dict[str, float], float, int]:
    """The contended run again with the 16 agents spread over ``processes`` processes (each its own GIL and
    Coordinator, as real agents would be), with its CPU per request, FIFO floor and FIFO check."""
    shape = f"16 agents in {processes} processes"
    print(f"contended, the same 16 agents on 4 resources as {processes} processes (threads of one Coordinator "
          f"each, {per_agent} acquire+release per agent, after the same warm-up):")
    with psycopg.connect(url) as conn:
        meter = CpuMeter({"postgres": postmaster_pid(conn)})
    lat, wall, client = lease_contended_processes(url, 16, 4, per_agent, processes, "bench:p", warmed=meter.start)
    time.sleep(0.5)
    meter.stop()
    figures = summary(f"lease ({processes} processes)", lat, wall)
    n, ncpu = max(len(lat), 1), os.cpu_count() or 1
    cpu_client, cpu_pg = client / n * 1e3, meter.used["postgres"] / n * 1e3
    cores = (client + meter.used["postgres"]) / wall
    floor_ms = fifo_floor_ms(16, (cpu_client + cpu_pg) / ncpu)
    print(f"  CPU per contended request: agent processes {cpu_client * 1e3:.0f} us, PostgreSQL {cpu_pg * 1e3:.0f} us; "
          f"the run got {cores:.2f} of {ncpu} cores")
    print(f"  FIFO floor (Little's law, here {16e3 / figures['rate']:.1f} ms): CPU floor with all {ncpu} cores ours "
          f"16 x {cpu_client + cpu_pg:.2f} ms / {ncpu} = {floor_ms:.1f} ms; with the {cores:.2f} cores this run got "
          f"{fifo_floor_ms(16, (cpu_client + cpu_pg) / max(cores, 1e-9)):.1f} ms; measured mean {figures['mean']:.1f}, "
          f"p99 {figures['p99']:.1f} ms (p99 / floor {figures['p99'] / floor_ms:.1f}x)")
    skipped, checked = queue_order(url, "bench:p")
    print(f"  FIFO in the database's own order: {skipped} of {checked} grants went past the head of a non-empty queue")
    return shape, figures, floor_ms, skipped
