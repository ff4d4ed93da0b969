"""The projector's fixed cost per batch at a steady rate: ``eventstore bench batchcost``.

At a steady low rate the projector commits many small batches (a median of ~4 events at 1,000 events/s), so
what a batch costs whatever its size, not what an event costs, decides its CPU. This benchmark starts fresh
embedded servers and a projector *process* (``eventstore.bench.batchprojector``: the shipped Projector, its
threads named for the kernel, its statements counted), emits at each rate from an agent in this process, and
prints per batch and per event: the projector process's CPU by thread (batch thread, publisher, librdkafka,
the rest), PostgreSQL's CPU by backend (the projector's, the publisher's, the agent's listener, the server's own
processes), statements, pipeline syncs and transactions per batch, the broker's CPU, and emit -> outcome of
every 10th event (p50/p99: what a batch wait costs in latency).

The baseline, measured in the same run and alternated with the others (A, B, C, D, E, A, B, ...): the same
1,000 events/s with the batches forced larger (``EVENTSTORE_BATCH_WAIT_MS=50``, so a batch waits for ~50
events): what an event costs when the per-batch part is spread over 50 events instead of ~5. From the two,
the cost is split into a fixed part per batch and a part per event. ``EVENTSTORE_BENCH_COUNT_STATEMENTS=each``
also counts each statement's text per batch; ``EVENTSTORE_BENCH_STEPS=1`` times each step of the batch on the
batch thread's CPU clock. Findings: docs/perf-batchcost.md.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from eventstore.bench import agents as bench_agents
from eventstore.bench.drain import thread_cpu
from eventstore.bench.launch import child, child_env, head, postmaster_pid, proc_cpu, wait_for
from eventstore.bench.writepath import CpuMeter, make_events
from eventstore.core.outcomes import Outcome
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedServers
from eventstore.postgres.migrate import upgrade
from eventstore.sdk.client import AgentClient

# (label, rate, batch wait ms): the rates at the default settings, and the baseline (batches forced larger).
# The 2 ms batch wait shows the trade an operator can make (EVENTSTORE_BATCH_WAIT_MS: CPU per event against
# added latency); the last variant is the baseline.
VARIANTS: tuple[tuple[str, int, int], ...] = (
    ("250/s", 250, 0), ("1,000/s", 1000, 0), ("1,000/s, batch wait 2 ms", 1000, 2), ("4,000/s", 4000, 0),
    ("1,000/s, batch wait 50 ms", 1000, 50))
BACKENDS = {"eventstore-projector": "projector's", "eventstore-publisher": "publisher's"}


@dataclass
class Run:
    """What one run at one rate measured: CPU seconds by part, and the projector's counters."""

    events: int = 0
    batches: int = 0
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)
    load: float = 0.0
    latencies: list[float] = field(default_factory=list)  # emit -> outcome (ms) of every 10th event

    def merge(self, other: Run) -> None:
        self.events += other.events
        self.batches += other.batches
        self.seconds += other.seconds
        for k, v in other.cpu.items():
            self.cpu[k] = self.cpu.get(k, 0.0) + v
        for k, v in other.counts.items():
            self.counts[k] = self.counts.get(k, 0.0) + v
        self.latencies += other.latencies


def _role(name: str) -> str:
    if name.startswith("projector-"):
        return "batch thread"
    if name.startswith("publisher"):
        return "publisher"
    if name.startswith("rdk:"):
        return "librdkafka"
    return "other threads"


def backend_cpu(conn: psycopg.Connection[Any], postmaster: int) -> dict[str, float]:
    """PostgreSQL's CPU seconds so far by backend: the projector's and publisher's connections (by application
    name), the other client backends (the agent's listener, this benchmark), and the server's own processes."""
    rows = conn.execute("SELECT pid, application_name, backend_type FROM pg_stat_activity").fetchall()
    known = {int(pid): (BACKENDS.get(str(app), "other clients'") if btype == "client backend" else "server's own")
             for pid, app, btype in rows}
    out: dict[str, float] = {}
    for task in Path("/proc").glob("[0-9]*"):
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        pid = int(task.name)
        if int(fields[1]) != postmaster and pid != postmaster:
            continue
        part = "PG " + known.get(pid, "server's own") + " backend" if pid != postmaster else "PG server's own backend"
        out[part] = out.get(part, 0.0) + proc_cpu(pid)
    return out


@dataclass
class BatchProjector:
    """A running ``eventstore.bench.batchprojector`` process."""

    proc: Any
    out: Path

    def counters(self, timeout: float = 30.0) -> dict[str, Any]:
        self.out.unlink(missing_ok=True)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while not self.out.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the projector did not answer (exit code {self.proc.poll()})")
            time.sleep(0.02)
        data: dict[str, Any] = json.loads(self.out.read_text())
        return data


@contextmanager
def batch_projector(settings: Settings, batch_wait_ms: int, logdir: Path) -> Iterator[BatchProjector]:
    count = os.environ.get("EVENTSTORE_BENCH_COUNT_STATEMENTS", "1")
    env = child_env(settings, EVENTSTORE_BATCH_WAIT_MS=str(batch_wait_ms), EVENTSTORE_BENCH_COUNT_STATEMENTS=count,
                    EVENTSTORE_BENCH_STEPS=os.environ.get("EVENTSTORE_BENCH_STEPS", "0"))
    out = logdir / f"counters-{uuid.uuid4().hex[:6]}.json"
    with child([sys.executable, "-m", "eventstore.bench.batchprojector", str(out)], env,
               logdir / "projector.log", append=True) as proc:
        yield BatchProjector(proc, out)


def _snapshot(proj: BatchProjector, meter: CpuMeter, conn: psycopg.Connection[Any],
              postmaster: int) -> tuple[dict[str, Any], dict[int, tuple[str, float]], dict[str, float], float]:
    counters = proj.counters()
    threads = thread_cpu(proj.proc.pid)
    backends = backend_cpu(conn, postmaster)
    return counters, threads, backends, time.monotonic()


def _noter(latencies: list[float], sent: float) -> Callable[[Future[Any]], None]:
    """A callback that notes the milliseconds from ``sent`` to when the outcome arrived."""
    def note(_: Future[Any]) -> None:
        latencies.append((time.monotonic() - sent) * 1e3)
    return note


def steady(client: AgentClient, proj: BatchProjector, meter: CpuMeter, conn: psycopg.Connection[Any],
           postmaster: int, rate: int, seconds: float, prefix: str) -> Run:
    """Emit at ``rate`` for ``seconds``, wait for the log to hold them all; what it cost."""
    n = int(rate * seconds)
    events = make_events(n, prefix, seed=rate)
    target = head(conn) + n
    meter.start()
    c0, t0, b0, m0 = _snapshot(proj, meter, conn, postmaster)
    start = time.monotonic()
    handles = []
    latencies: list[float] = []
    for i, (event, stream) in enumerate(events):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sent = time.monotonic()
        h = client.emit(event, stream)
        handles.append(h)
        if i % 10 == 0:  # a sample of emit -> outcome (when the agent's listener settled it)
            h.future.add_done_callback(_noter(latencies, sent))
    wait_for(lambda: head(conn), target, 60.0, "the log head")
    c1, t1, b1, m1 = _snapshot(proj, meter, conn, postmaster)
    meter.stop()
    failed = sum(1 for h in handles if h.result(30).status is not Outcome.COMMITTED)
    if failed:
        raise RuntimeError(f"{failed} of {n} events were not committed")
    run = Run(events=int(c1["messages"]) - int(c0["messages"]), batches=int(c1["batches"]) - int(c0["batches"]),
              seconds=m1 - m0, load=os.getloadavg()[0], latencies=latencies)
    for tid, (name, cpu) in t1.items():
        role = _role(name)
        run.cpu[role] = run.cpu.get(role, 0.0) + cpu - t0.get(tid, (name, 0.0))[1]
    for part, cpu in b1.items():
        run.cpu[part] = cpu - b0.get(part, 0.0)
    run.cpu["PostgreSQL (all)"] = meter.used.get("postgres", 0.0)
    run.cpu["tansu"] = meter.used.get("tansu", 0.0)
    for k, v in c1["counts"].items():
        run.counts[k] = v - c0["counts"].get(k, 0)
    for k, v in c1.get("cpu", {}).items():
        run.cpu["step " + k] = v - c0.get("cpu", {}).get(k, 0.0)
    return run


PROJECTOR_PARTS = ("batch thread", "publisher", "librdkafka", "other threads")


def print_run(label: str, run: Run, baseline: Run | None = None) -> None:
    """One line per run: per batch and per event, by thread; statements per batch."""
    if not run.batches or not run.events:
        print(f"  {label}: no batches", flush=True)
        return
    proc = sum(run.cpu.get(p, 0.0) for p in PROJECTOR_PARTS)
    size = run.events / run.batches
    per_batch = {p: run.cpu.get(p, 0.0) / run.batches * 1e6 for p in PROJECTOR_PARTS}
    lat = sorted(run.latencies)
    p50, p99 = (lat[len(lat) // 2], lat[min(len(lat) - 1, len(lat) * 99 // 100)]) if lat else (0.0, 0.0)
    print(f"  {label}: {run.events:,} events in {run.batches:,} batches (mean {size:.1f} events), "
          f"{run.batches / run.seconds:,.0f} batches/s; emit -> outcome p50 {p50:.1f}, p99 {p99:.1f} ms "
          f"(every 10th event); load {run.load:.2f}", flush=True)
    print(f"    projector process {proc / run.batches * 1e6:,.0f} µs CPU per batch = {proc / run.events * 1e6:,.0f} "
          f"µs per event ({proc / run.seconds * 100:.1f} % of a core): "
          + ", ".join(f"{p} {v:,.0f}" for p, v in per_batch.items()) + " µs per batch", flush=True)
    pg = [k for k in sorted(run.cpu) if k.startswith("PG ")]
    print(f"    PostgreSQL {run.cpu.get('PostgreSQL (all)', 0.0) / run.batches * 1e6:,.0f} µs per batch "
          f"({run.cpu.get('PostgreSQL (all)', 0.0) / run.events * 1e6:,.0f} per event): "
          + ", ".join(f"{k[3:]} {run.cpu[k] / run.batches * 1e6:,.0f}" for k in pg)
          + f"; tansu {run.cpu.get('tansu', 0.0) / run.batches * 1e6:,.0f} µs per batch "
          f"({run.cpu.get('tansu', 0.0) / run.seconds * 100:.1f} % of a core)", flush=True)
    steps = sorted(((k[5:], v) for k, v in run.cpu.items() if k.startswith("step ")), key=lambda kv: -kv[1])
    if steps:
        print("    batch thread CPU µs per batch by step: " + ", ".join(f"{k} {v / run.batches * 1e6:,.0f}"
                                                                     for k, v in steps), flush=True)
    counts = sorted(run.counts.items(), key=lambda kv: -kv[1])
    print("    per batch: " + ", ".join(f"{k} {v / run.batches:.2f}" for k, v in counts if v), flush=True)
    if baseline is not None and baseline.events and baseline.batches:
        base = sum(baseline.cpu.get(p, 0.0) for p in PROJECTOR_PARTS)
        pg_base = baseline.cpu.get("PostgreSQL (all)", 1e-9) / baseline.events
        print(f"    against the baseline (batches of {baseline.events / baseline.batches:.1f}): projector per event "
              f"{proc / run.events / (base / baseline.events):.2f}x, PostgreSQL per event "
              f"{run.cpu.get('PostgreSQL (all)', 0.0) / run.events / pg_base:.2f}x",
              flush=True)


def fixed_cost(small: Run, large: Run) -> None:
    """The per-batch and per-event parts, from two runs at the same rate with different batch sizes:
    cost = fixed * batches + marginal * events, solved for the projector process and PostgreSQL."""
    if not (small.batches and large.batches) or small.events / small.batches >= large.events / large.batches:
        return
    for name, parts in (("projector process", PROJECTOR_PARTS), ("batch thread", ("batch thread",)),
                        ("publisher", ("publisher",)), ("librdkafka", ("librdkafka",)),
                        ("PostgreSQL", ("PostgreSQL (all)",))):
        a = sum(small.cpu.get(p, 0.0) for p in parts) / small.events
        b = sum(large.cpu.get(p, 0.0) for p in parts) / large.events
        ia, ib = small.batches / small.events, large.batches / large.events
        fixed = (a - b) / (ia - ib)
        print(f"  {name}: ~{fixed * 1e6:,.0f} µs per batch + ~{(a - fixed * ia) * 1e6:,.1f} µs per event", flush=True)


FLOOR_STATEMENT = "SELECT count(*) FROM unnest(%b::text[])"


def statement_floor(url: str, statements: int = 16, transactions: int = 1000) -> tuple[float, float]:
    """The floor under a batch's fixed cost: ``statements`` trivial prepared statements (one array parameter,
    no table) in one pipelined, durable transaction with one sync, as the projector sends its batch; client
    CPU and server (that backend's) CPU per transaction, in µs."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        backend = int(row[0]) if row else 0
        conn.autocommit = False
        arg = (["a", "b", "c", "d"],)

        def one() -> None:
            with conn.pipeline() as pipe, conn.transaction(), conn.cursor() as cur:
                for i in range(statements):
                    cur.execute(FLOOR_STATEMENT, arg)
                    if i == statements // 2:
                        pipe.sync()
                cur.fetchall()

        for _ in range(20):  # prepared after psycopg's threshold
            one()
        client0, server0 = time.thread_time(), proc_cpu(backend)
        for _ in range(transactions):
            one()
        return ((time.thread_time() - client0) / transactions * 1e6,
                (proc_cpu(backend) - server0) / transactions * 1e6)


def main(seconds: float = 5.0, rounds: int = 2, variants: tuple[tuple[str, int, int], ...] = VARIANTS) -> int:
    print(f"projector cost per batch at steady rates: {', '.join(v[0] for v in variants)}, {seconds:.0f} s each, "
          f"{rounds} rounds alternately; load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs, shared "
          "machine); durable commits, authentication and the hash chain on; one agent in this process", flush=True)
    logdir = Path(tempfile.mkdtemp(prefix="eventstore-batchcost-"))
    merged = {label: Run() for label, _, _ in variants}
    with EmbeddedServers(None) as servers:
        upgrade(servers.postgres.url)
        base = Settings.from_env().with_servers(servers.postgres.url, servers.broker.bootstrap)
        with psycopg.connect(servers.postgres.url, autocommit=True) as conn:
            postmaster = postmaster_pid(conn)
            for r in range(rounds):
                for label, rate, wait in variants:
                    ns = f"bc{r}-{rate}-{wait}"
                    settings = base.replace(namespace=ns, projector_group=ns)
                    client = bench_agents.client(f"agent-{ns}", settings)
                    try:
                        with batch_projector(settings, wait, logdir) as proj:
                            pids = {"projector": proj.proc.pid, "postgres": postmaster}
                            if servers.broker.pid is not None:
                                pids["tansu"] = servers.broker.pid
                            meter = CpuMeter(pids)
                            for i, (event, stream) in enumerate(make_events(20, f"warm-{ns}", 1)):
                                got = client.emit_and_wait(event, stream, timeout=90 if i == 0 else 10)
                                if got.status is not Outcome.COMMITTED:
                                    raise RuntimeError(f"warm-up event not committed: {got}")
                            run = steady(client, proj, meter, conn, postmaster, rate, seconds, f"r{r}{ns}")
                    finally:
                        client.close()
                    print_run(f"round {r + 1}, {label}", run)
                    merged[label].merge(run)
            client_us, server_us = statement_floor(servers.postgres.url)
            print(f"  floor: 16 trivial prepared statements in one pipelined durable transaction (no table, nothing "
                  f"to lock or write): client {client_us:,.0f} µs CPU, server backend {server_us:,.0f} µs per "
                  f"transaction; load {os.getloadavg()[0]:.2f}", flush=True)
    print("\nmerged rounds", flush=True)
    baseline_label = variants[-1][0]
    for label, _, _ in variants:
        merged[label].load = os.getloadavg()[0]
        print_run(label, merged[label], None if label == baseline_label else merged[baseline_label])
    small = next((merged[label] for label, rate, wait in variants if rate == 1000 and wait == 0), None)
    if small is not None:
        print("\nsplit into a fixed part per batch and a part per event (1,000/s at the default settings against "
              "the same rate with batches waited for):", flush=True)
        fixed_cost(small, merged[baseline_label])
    print(f"\nlogs in {logdir}; load average after the run {os.getloadavg()[0]:.2f}", flush=True)
    return 0
