"""``eventstore bench references``: the reference figures of issue 11, measured in one run on fresh
embedded servers, beside our own: the raw PostgreSQL ceiling (unnest batches, COPY), the
``eventsourcing`` library as the peer, the SDK's cost per event (``emit`` and ``emit_many``), and a
projector draining a pre-filled intake topic (CPU per component, peak RSS per process).

The machine is shared: the load average is printed before and after, and ratios between figures of
the same run are what count.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg

from eventstore.bench import agents as bench_agents
from eventstore.bench import ceiling, drain, peers
from eventstore.bench.launch import server_pids
from eventstore.bench.writepath import (
    CpuMeter,
    make_events,
    projector,
    publish_from_head,
    throughput,
    wait_ready,
)
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedServers
from eventstore.postgres.migrate import upgrade


@dataclass(frozen=True)
class AgentCost:
    """Microseconds per event on the agent's side: wall time of the calls, and process CPU (all threads,
    librdkafka's included) from the first call until the broker acknowledged everything."""

    emit_wall: float
    emit_cpu: float
    many_wall: float
    many_cpu: float
    events: int

    def lines(self) -> list[str]:
        return [f"agent (SDK), {self.events:,} events per round, median of 3 interleaved rounds:",
                f"  emit()      : {self.emit_wall:6.1f} us per call, {self.emit_cpu:6.1f} us CPU per event "
                f"(aim <= 15 us)",
                f"  emit_many() : {self.many_wall:6.1f} us per event, {self.many_cpu:6.1f} us CPU per event "
                f"(batches of 1,000); emit / emit_many wall ratio {self.emit_wall / self.many_wall:.2f}x"]


def agent_cost(settings: Settings, n: int) -> AgentCost:
    """Emit n events with emit() and with emit_many() in interleaved rounds, each round on a fresh client;
    nobody projects them, so only the agent's own work and the producer's are measured (a round is
    shorter than the listener's 1 s re-check, which would otherwise look up the pending handles)."""
    samples: dict[str, list[tuple[float, float]]] = {"emit": [], "many": []}
    for r in range(3):
        for kind in ("emit", "many"):
            events = make_events(n, f"{kind}{r}", seed=r)
            with bench_agents.client(f"bench-agent-{kind}{r}", settings) as client:
                client.emit_many(make_events(1000, f"warm{kind}{r}", seed=7))
                client.flush(60)
                c0, t0 = time.process_time(), time.perf_counter()
                if kind == "emit":
                    for e, s in events:
                        client.emit(e, s)
                else:
                    for i in range(0, n, 1000):
                        client.emit_many(events[i:i + 1000])
                wall = time.perf_counter() - t0
                client.flush(120)
                cpu = time.process_time() - c0
            samples[kind].append((wall / n * 1e6, cpu / n * 1e6))
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in samples.items()}
    return AgentCost(med["emit"][0], med["emit"][1], med["many"][0], med["many"][1], n)


def conditions(url: str) -> None:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT version(), current_setting('synchronous_commit'), current_setting('fsync')"
                           ).fetchone()
    print("Conditions")
    print(f"  machine   : {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}; "
          f"load average {os.getloadavg()[0]:.2f} (shared with other users: absolute figures wander, "
          "ratios of this run count)")
    if row:
        print(f"  PostgreSQL: {row[0].split(',')[0]} embedded, stock settings "
              f"(synchronous_commit={row[1]}, fsync={row[2]})")
    print("  broker    : tansu (embedded, in-memory storage); everything on this machine")


def main(events: int = 1_000_000, quick: bool = False) -> int:
    """Run every reference; 0 when the correctness checks passed."""
    if quick:
        events = min(events, 100_000)
    run = uuid.uuid4().hex[:6]
    logdir = Path(tempfile.mkdtemp(prefix="eventstore-bench-refs-"))
    started = time.monotonic()
    print(f"eventstore reference benchmark: drain of {events:,} events{' (quick mode)' if quick else ''}; "
          f"logs in {logdir}", flush=True)
    with EmbeddedServers(None) as servers:
        url = servers.postgres.url
        upgrade(url)
        conditions(url)
        base = Settings.from_env().with_servers(url, servers.broker.bootstrap)
        print("\n[1] raw PostgreSQL ceiling ...", flush=True)
        ceil = ceiling.measure(url, 20_000 if quick else 50_000, 50_000 if quick else 100_000)
        print("\n".join("  " + line for line in ceil.lines()), flush=True)
        print("\n[2] the peer ...", flush=True)
        peer = peers.measure(url, 500 if quick else 2000)
        print("\n".join("  " + line for line in peer.lines()), flush=True)
        print("\n[3] agent cost per event ...", flush=True)
        cost = agent_cost(base.replace(namespace=f"refs-{run}-agent"), 10_000 if quick else 20_000)
        print("\n".join("  " + line for line in cost.lines()), flush=True)
        print(f"\n[4] projector drain of {events:,} pre-filled events ...", flush=True)
        with psycopg.connect(url, autocommit=True) as conn:
            pids = {"benchmark process": os.getpid(), **server_pids(servers, conn)}
            d = drain.drain(base.replace(namespace=f"refs-{run}-drain", projector_group=f"refs-{run}-drain"),
                            events, conn, pids, logdir)
            print("\n".join("  " + line for line in drain.report(d, ceil.unnest_rate)), flush=True)
            e2e_n = 20_000 if quick else 100_000
            print(f"\n[5] end to end: {e2e_n:,} events emitted by one agent until the read model shows them ...",
                  flush=True)
            e2e = base.replace(namespace=f"refs-{run}-e2e", projector_group=f"refs-{run}-e2e")
            publish_from_head(conn, e2e)  # its publisher does not republish the drain's events
            with projector(e2e, "process", logdir / "projector-e2e.log") as ppid, \
                    bench_agents.client("bench-refs-e2e", e2e) as client:
                wait_ready(client, "ew")
                cpu = CpuMeter({**pids, **({"projector process": ppid} if ppid else {})})
                tp = throughput(client, conn, e2e_n, "et", cpu)
            print(f"  end to end: {tp.rate:,.0f} events/s ({tp.events:,} events in {tp.seconds:.1f} s; aim >= 25,000/s"
                  ")")
            print("  CPU per event: " + ", ".join(f"{k} {v / e2e_n * 1e6:.0f} us" for k, v in cpu.used.items()))
            print(f"  correctness: {'PASS' if tp.ok else 'FAIL'}: {tp.detail}", flush=True)
        print("\n[6] raw PostgreSQL ceiling again (the load may have changed) ...", flush=True)
        ceil2 = ceiling.measure(url, 20_000 if quick else 50_000, 50_000 if quick else 100_000)
        print("\n".join("  " + line for line in ceil2.lines()), flush=True)
    ref = (ceil.unnest_rate + ceil2.unnest_rate) / 2
    print("\nSummary (ratios against the mean of the two ceiling measurements, "
          f"{ceil.unnest_rate:,.0f} and {ceil2.unnest_rate:,.0f} events/s)")
    print(f"  projector drain / ceiling: {d.rate / ref:.2f}x   end to end / ceiling: {tp.rate / ref:.2f}x   "
          "(aim >= 0.5x)")
    if peer.one_per_save:
        print(f"  end to end / eventsourcing 1 event per save: {tp.rate / peer.one_per_save:.1f}x; "
              f"/ 10 events per save: {tp.rate / (peer.ten_per_save or 1):.1f}x")
    print(f"\nload average after the run {os.getloadavg()[0]:.2f}; total {time.monotonic() - started:.0f} s")
    return 0 if d.ok and tp.ok else 1
