"""``eventstore bench publisher-latency``: how long a committed event waits for the publisher.

At a steady rate (1,000 events/s by default) an agent emits through a projector process with its
publisher thread, in two variants, rounds interleaved, each into a fresh database on the same embedded
servers:

- ``every-page``: the previous publisher, the baseline: after each page it waits for the broker's
  acknowledgement and stores its checkpoint (a durable commit) before it takes the next page;
- ``pipelined``: as shipped: it produces each page as soon as it is handed over, while earlier pages'
  acknowledgements are outstanding, and stores the checkpoint every 0.25 s over acknowledged positions;
- ``flush-each`` (only when asked for, ``main(variants=...)``): waits for the broker every page, stores the
  checkpoint every 0.25 s.

The pages per round are printed too: commit -> produced follows how many batches the projector made
(small batches, short inserts) at least as much as the publisher variant, and that moves with the load.

The figure is commit -> produced per event: the message's CreateTime (set by the producer when the
publisher calls ``produce``; millisecond resolution) minus the event's ``recorded_at`` (the database's
clock_timestamp() when its batch took the log head, before the insert and the durable COMMIT), read back
from the committed topic; plus the projector process's CPU per event from /proc over the same minutes.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from psycopg import sql

from eventstore.bench.launch import head, postmaster_pid
from eventstore.bench.publishing import checkpoint, conditions, projector_process
from eventstore.bench.writepath import CpuMeter, wait_ready
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedServers
from eventstore.examples.inventory import InventoryAdjusted, stream_for
from eventstore.kafka.config import consumer_config
from eventstore.postgres.agents import register
from eventstore.postgres.migrate import upgrade
from eventstore.sdk.client import AgentClient
from eventstore.wire.committed import decode_committed

VARIANTS = ("every-page", "pipelined")


@dataclass(frozen=True)
class LatencyRound:
    variant: str
    waits_ms: list[float]  # recorded_at -> produced, sorted
    cpu_us: float  # projector process CPU per event
    pg_us: float  # PostgreSQL (all backends) CPU per event
    load: float
    ok: bool
    own: str  # the projector process's own split: handed over -> produced

    @property
    def pages(self) -> int:
        found = re.search(r"(\d+) pages", self.own)
        return int(found.group(1)) if found else 0

    def pct(self, p: float) -> float:
        return self.waits_ms[min(len(self.waits_ms) - 1, int(len(self.waits_ms) * p / 100))] if self.waits_ms \
            else float("nan")


def produced_waits(settings: Settings, after: int, last: int) -> list[float]:
    """recorded_at -> CreateTime in ms for each position in (after, last] on the committed topic."""
    consumer = Consumer(consumer_config(settings, f"{settings.namespace}.bench-latency"))
    waits: dict[int, float] = {}
    try:
        consumer.assign([TopicPartition(settings.committed_topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + 60
        while len(waits) < last - after and time.monotonic() < deadline:
            for m in consumer.consume(1000, timeout=0.2):
                if m.error() is None:
                    ev = decode_committed(m.value() or b"")
                    if after < ev.position <= last and ev.position not in waits:  # repeats dropped
                        waits[ev.position] = m.timestamp()[1] - ev.recorded_at.timestamp() * 1000
    finally:
        consumer.close()
    return sorted(waits.values())


def one_round(base: Settings, admin_url: str, variant: str, n: int, rate: int, pids: dict[str, int],
              logdir: Path, tag: str) -> LatencyRound:
    dbname = f"bench_publat_{tag}_{variant.replace('-', '_')}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    parts = urlsplit(admin_url)
    url = urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))
    upgrade(url)
    settings = base.with_servers(url, base.require_servers()[1]).replace(
        namespace=f"publat-{tag}-{variant}", projector_group=f"publat-{tag}-{variant}")
    with psycopg.connect(url, autocommit=True) as conn, \
            projector_process(settings, variant, logdir / f"projector-{tag}-{variant}.log") as proc:
        cred = str(register(conn.cursor(), "bench-publisher"))
        with AgentClient("bench-publisher", settings, credential=cred) as client:
            wait_ready(client, "w")
            while checkpoint(conn, settings.committed_topic) < head(conn):
                time.sleep(0.01)
            start = head(conn)
            cpu = CpuMeter({**pids, "projector process": proc.pid})
            cpu.start()
            t0 = time.perf_counter()
            handles = []
            for i in range(n):
                if (delay := t0 + i / rate - time.perf_counter()) > 0:
                    time.sleep(delay)
                sku = f"p-{i % 200:03d}"
                handles.append(client.emit(InventoryAdjusted(sku=sku, delta=1), stream_for(sku)))
            ok = all(h.result(60).ok for h in handles)
            last = head(conn)
            deadline = time.monotonic() + 60
            while checkpoint(conn, settings.committed_topic) < last and time.monotonic() < deadline:
                time.sleep(0.01)
            cpu.stop()
            load = os.getloadavg()[0]
    waits = produced_waits(settings, start, last)
    log_text = (logdir / f"projector-{tag}-{variant}.log").read_text(errors="replace")
    own = next((line for line in log_text.splitlines() if line.startswith("handed -> produced")), "")
    ok = ok and len(waits) == last - start == n
    return LatencyRound(variant, waits, cpu.used["projector process"] / n * 1e6, cpu.used["postgres"] / n * 1e6,
                        load, ok, own)


def main(events: int = 3000, rate: int = 1000, rounds: int = 3, variants: tuple[str, ...] = VARIANTS) -> int:
    """``rounds`` interleaved rounds of both variants; 0 when every round published every event."""
    tag = uuid.uuid4().hex[:6]
    logdir = Path(tempfile.mkdtemp(prefix="eventstore-bench-publisher-latency-"))
    print(f"eventstore publisher latency benchmark: {rounds} rounds x {len(variants)} variants x {events:,} events "
          f"at {rate}/s through one projector process (publisher thread inside); logs in {logdir}", flush=True)
    results: list[LatencyRound] = []
    with EmbeddedServers(None) as servers:
        url = servers.postgres.url
        conditions(url)
        print("  figure    : commit -> produced = the message's CreateTime (ms resolution) - recorded_at (the batch's "
              "head lock, before insert and durable COMMIT)", flush=True)
        base = Settings.from_env().with_servers(url, servers.broker.bootstrap)
        with psycopg.connect(url, autocommit=True) as conn:
            postmaster = postmaster_pid(conn)
        pids = {"postgres": postmaster}
        for r in range(rounds):
            for variant in variants if r % 2 == 0 else variants[::-1]:
                res = one_round(base, url, variant, events, rate, pids, logdir, f"{tag}{r}")
                results.append(res)
                print(f"  round {r + 1} {variant:10s}: commit -> produced p50 {res.pct(50):6.1f} ms, p90 "
                      f"{res.pct(90):6.1f}, p99 {res.pct(99):6.1f}; CPU per event: projector process "
                      f"{res.cpu_us:6.1f} us, PostgreSQL {res.pg_us:6.1f} us; load {res.load:.2f}; "
                      f"{'PASS' if res.ok else 'FAIL'}\n      {res.own}", flush=True)
    print(f"\nSummary (median over {rounds} rounds; load average now {os.getloadavg()[0]:.2f})")
    med: dict[str, dict[str, float]] = {}
    for v in variants:
        mine = [r for r in results if r.variant == v]
        med[v] = {f"p{p}": statistics.median(r.pct(p) for r in mine) for p in (50, 90, 99)}
        med[v]["cpu"] = statistics.median(r.cpu_us for r in mine)
        med[v]["pg"] = statistics.median(r.pg_us for r in mine)
        med[v]["pages"] = statistics.median(r.pages for r in mine)
    for v in variants:
        m = med[v]
        print(f"  {v:10s}: commit -> produced p50 {m['p50']:6.1f} ms, p90 {m['p90']:6.1f}, p99 {m['p99']:6.1f}; "
              f"CPU per event: projector process {m['cpu']:6.1f} us, PostgreSQL {m['pg']:6.1f} us; "
              f"{m['pages']:.0f} pages")
    a, b = med["every-page"], med["pipelined"]
    print(f"  pipelined / every-page: p50 {b['p50'] / a['p50']:.2f}x, p90 {b['p90'] / a['p90']:.2f}x, "
          f"p99 {b['p99'] / a['p99']:.2f}x; CPU projector process {b['cpu'] / a['cpu']:.2f}x, "
          f"PostgreSQL {b['pg'] / a['pg']:.2f}x")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000))
