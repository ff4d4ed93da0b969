"""Scale-out benchmark: drain rate of 1, 2 and 4 projector processes against one PostgreSQL, and how
much of their time batches spend waiting for the log-head lock (the global order).

Run with ``eventstore bench scale [--events N] [--processes 1,2,4]``. Fresh embedded servers; per
process count a fresh namespace whose topics are created up front. The projectors are started, each
intake partition gets one warm-up event (so every member has joined and been assigned before the clock
starts), then N events are produced as fast as one raw producer goes and the clock runs until the log
head has moved N positions. While it runs, ``pg_stat_activity`` is sampled every few milliseconds: a
backend of the run's database waiting on a heavyweight lock with the log-head statement
(``... FROM log_head FOR UPDATE``) counts as waiting on the head. Backend-seconds are estimated as
samples x interval, so the figures are estimates with the sampling error of any profiler.

Baseline: the 1-process run, measured in the same run; the ratio of each run to it is printed.
"""

from __future__ import annotations

import os
import platform
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Producer

from eventstore.bench import agents as bench_agents
from eventstore.bench.launch import head, wait_for
from eventstore.bench.writepath import SKUS, _machine_busy, make_events, projector
from eventstore.core.auth import Credential
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedServers
from eventstore.kafka.admin import TopicSpec, create_topics
from eventstore.kafka.config import producer_config
from eventstore.postgres.eventlog import LOCK_HEAD
from eventstore.postgres.migrate import upgrade
from eventstore.sdk.client import build_envelope
from eventstore.wire.envelope import encode

SAMPLE_INTERVAL = 0.005
READY_TIMEOUT = 120.0
STALL_TIMEOUT = 60.0
HEAD_MARK = "FROM log_head FOR UPDATE"

SAMPLE = (
    "SELECT wait_event_type, wait_event, state, position(%s in query) > 0 FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
    "AND application_name <> 'bench-sampler' AND state <> 'idle'"
)


@dataclass
class LockSampler:
    """Samples what the run's database backends are doing, in a thread, until stopped."""

    url: str
    samples: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    interval: float = SAMPLE_INTERVAL  # replaced by the effective interval (drain time / passes) at the end

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lock-sampler", daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True, application_name="bench-sampler") as conn:
            while not self._stop.is_set():
                for wtype, wevent, state, is_head in conn.execute(SAMPLE, (HEAD_MARK,)).fetchall():
                    if wtype == "Lock" and is_head:
                        self.counts["waiting on the log-head lock"] += 1
                    elif wtype == "Lock":
                        self.counts[f"waiting on another lock ({wevent})"] += 1
                    elif wtype in ("IO", "IPC", "LWLock") and wevent:
                        self.counts[f"{wtype}:{wevent}"] += 1
                    elif wtype == "Client":
                        self.counts["waiting for the projector's next statement (ClientRead)"] += 1
                    else:
                        self.counts[f"on CPU ({state})"] += 1
                self.samples += 1
                time.sleep(SAMPLE_INTERVAL)

    def start(self) -> LockSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def seconds(self, what: str) -> float:
        """Estimated backend-seconds spent in a state (samples x effective interval)."""
        return self.counts[what] * self.interval


@dataclass(frozen=True)
class Run:
    processes: int
    events: int
    produce_seconds: float
    drain_seconds: float
    head_wait: float  # estimated backend-seconds waiting on the log-head lock
    busy: float  # estimated backend-seconds in a transaction (any state but idle)
    breakdown: dict[str, float]
    machine_busy: float  # CPU seconds of the whole machine during the drain
    ok: bool
    detail: str

    @property
    def rate(self) -> float:
        return self.events / self.drain_seconds


Message = tuple[bytes, bytes, Any]


def encode_events(prefix: str, n: int, credential: Credential) -> list[Message]:
    """n InventoryAdjusted events encoded and signed as intake messages (done before the clock starts)."""
    return [encode(build_envelope("bench-scale", event, stream, expected_version=None, idempotency_key=None,
                                  correlation_id=None, causation_id=None, lease=None), credential)
            for event, stream in make_events(n, prefix, seed=n)]


def produce(producer: Producer, topic: str, messages: list[Message], partitions: bool = False) -> float:
    """Produce encoded messages (message i to partition i when ``partitions``); returns the seconds taken."""
    t0 = time.perf_counter()
    for i, (key, value, headers) in enumerate(messages):
        while True:
            try:
                if partitions:
                    producer.produce(topic, value=value, key=key, headers=headers, partition=i)
                else:
                    producer.produce(topic, value=value, key=key, headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(60) != 0:
        raise RuntimeError("the producer could not deliver every event within 60 s")
    return time.perf_counter() - t0


def run_one(base: Settings, nproc: int, events: int, logdir: Path) -> Run:
    ns = f"scale{nproc}-{uuid.uuid4().hex[:6]}"
    # The projector processes inherit EVENTSTORE_INTAKE_PARTITIONS from this environment, so the topics
    # are created with the same count (settings.intake_partitions) they expect.
    settings = base.replace(namespace=ns, projector_group=f"{ns}.projector")
    parts = settings.intake_partitions
    create_topics(settings, [TopicSpec(t, n, 1) for t, n in (
        (settings.intake_topic, parts), (settings.committed_topic, 1),
        (settings.dead_letter_topic, 1), (settings.rejections_topic, 1))])
    db = settings.require_database()
    with psycopg.connect(db, autocommit=True) as conn, ExitStack() as stack:
        for i in range(nproc):
            stack.enter_context(projector(settings, "process", logdir / f"{ns}-{i}.log"))
        start = head(conn)
        # The idempotent producer is slow for its first half second: it is warmed by the warm-up events.
        producer = Producer(producer_config(settings, **{"linger.ms": 5, "batch.num.messages": 10000}))
        signer = bench_agents.credential(settings, "bench-scale")
        produce(producer, settings.intake_topic, encode_events(f"{ns}w", settings.intake_partitions, signer),
                partitions=True)
        messages = encode_events(f"{ns}t", events, signer)
        wait_for(lambda: head(conn), start + settings.intake_partitions, READY_TIMEOUT, "the log head", 0.002)
        time.sleep(2.0)  # let late joiners settle their assignment before the clock starts
        start = head(conn)
        sampler = LockSampler(db).start()
        cpu0 = _machine_busy()
        t0 = time.perf_counter()
        produce_s = produce(producer, settings.intake_topic, messages)
        wait_for(lambda: head(conn), start + events, STALL_TIMEOUT, "the log head", 0.002)
        drain = time.perf_counter() - t0
        machine = _machine_busy() - cpu0
        sampler.stop()
        # Effective sampling interval: one sample pass every drain/samples seconds.
        sampler.interval = drain / max(sampler.samples, 1)
        row = conn.execute(
            "SELECT count(*), count(DISTINCT idempotency_key), count(DISTINCT stream) FROM events "
            "WHERE position > %s AND stream LIKE %s", (start, f"inventory-{ns}t-%")).fetchone()
        count, distinct, streams = (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)
    counts = sampler.counts
    breakdown = {k: v * sampler.interval for k, v in counts.most_common()}
    ok = count == events and distinct == events
    detail = f"{count} events in the log (expected {events}), {distinct} distinct keys, {streams} streams"
    return Run(nproc, events, produce_s, drain, sampler.seconds("waiting on the log-head lock"),
               sum(breakdown.values()), breakdown, machine, ok, detail)


def conditions(settings: Settings, conn: psycopg.Connection[Any], events: int, counts: list[int]) -> None:
    row = conn.execute("SELECT version()").fetchone()
    print("Conditions")
    print(f"  machine    : {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}; "
          f"load average {os.getloadavg()[0]:.2f} before the run. The machine is SHARED with other engineers' "
          "test runs: figures move from run to run; compare the ratios within one run.")
    print(f"  PostgreSQL : {row[0] if row else '?'} (embedded, stock settings, synchronous_commit on)")
    print("  broker     : tansu (embedded, in-memory storage), one broker")
    print(f"  workload   : {events} InventoryAdjusted events over {SKUS} SKUs per run, no expected version, "
          f"{settings.intake_partitions} intake partitions;")
    print("               encoded up front, produced by one raw producer while the projectors drain")
    print(f"  projectors : {', '.join(map(str, counts))} separate processes in one consumer group; batch size "
          f"{settings.batch_size}; each also runs a committed-topic publisher candidate")
    print(f"  lock wait  : pg_stat_activity sampled every ~{SAMPLE_INTERVAL * 1000:.0f} ms "
          f"(the log-head statement is `{LOCK_HEAD}`)")


def report(runs: list[Run]) -> None:
    base = runs[0]
    print("\nSummary (drain = from the first produced event until the log head moved N positions)")
    print(f"  {'procs':>5} {'events/s':>10} {'x base':>7} {'drain s':>8} {'produce s':>9} "
          f"{'head-lock wait':>15} {'share of txn time':>18} {'machine CPU':>11}")
    for r in runs:
        share = r.head_wait / r.busy if r.busy else 0.0
        print(f"  {r.processes:>5} {r.rate:>10,.0f} {r.rate / base.rate:>6.2f}x {r.drain_seconds:>8.2f} "
              f"{r.produce_seconds:>9.2f} {r.head_wait:>13.2f} s {share:>17.0%} {r.machine_busy:>9.1f} s")
    for r in runs:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in list(r.breakdown.items())[:6])
        print(f"  {r.processes} process(es), backend-seconds by state: {parts}")
        print(f"  {r.processes} process(es), correctness: {'PASS' if r.ok else 'FAIL'}: {r.detail}")


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(events: int = 40_000, processes: str = "1,2,4") -> int:
    """Run the benchmark; 0 when every run's correctness check passed, 1 otherwise, 2 on bad arguments."""
    try:
        counts = [int(p) for p in processes.split(",") if p.strip()]
    except ValueError:
        counts = []
    if events < 1 or not counts or min(counts) < 1:
        print("bench scale: --events must be >= 1 and --processes a list like 1,2,4", file=sys.stderr)
        return 2
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    logdir = Path(tempfile.mkdtemp(prefix="eventstore-scale-"))
    print(f"eventstore scale benchmark: {events} events per run, projector processes {counts}; logs in {logdir}",
          flush=True)
    started = time.monotonic()
    try:
        with EmbeddedServers(None) as servers:
            upgrade(servers.postgres.url)
            base = Settings.from_env().with_servers(servers.postgres.url, servers.broker.bootstrap)
            with psycopg.connect(servers.postgres.url, autocommit=True) as conn:
                conditions(base, conn, events, counts)
            runs = []
            for n in counts:
                print(f"\n[{n} process(es)] starting ...", flush=True)
                r = run_one(base, n, events, logdir)
                print(f"[{n} process(es)] {r.rate:,.0f} events/s, head-lock wait {r.head_wait:.2f} backend-s "
                      f"of {r.busy:.2f} in transactions; {r.detail}", flush=True)
                runs.append(r)
    except KeyboardInterrupt:
        print("\nbench scale: interrupted; projectors and servers stopped", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"bench scale: failed: {e}", file=sys.stderr)
        return 1
    report(runs)
    print(f"  total run {time.monotonic() - started:.0f} s")
    return 0 if all(r.ok for r in runs) else 1
