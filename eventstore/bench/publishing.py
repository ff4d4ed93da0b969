"""``eventstore bench publisher``: what the committed-topic publisher costs the projector process.

The publisher runs as a thread of the projector process. Three variants drain the same pre-filled intake
topic, each into a fresh database on the same embedded servers, in one run (interleaved rounds):

- ``before``: the previous publisher, kept here as the baseline: it re-read every batch from the log
  (``eventlog.read_all``, a kwargs row factory building a RecordedEvent per row), encoded each event with
  ``json.dumps`` of a dict and had a Python delivery callback called per message;
- ``log``: this publisher with the hand-off off: it reads every event from the log as text rows;
- ``handoff``: this publisher as shipped: fed from the batch its projector just committed;
- ``none``: the projector without a publisher, which shows what publishing adds in each variant.

The clock and the CPU meter (/proc) run from the first committed batch until the log holds all events
**and** the publisher's checkpoint reached the last one, so the publisher's work is inside the window
whichever variant lags. The figure to read is the projector process's CPU per event and its ratio to
the ``before`` variant of the same run; wall rates wander with the machine's load.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from confluent_kafka import Producer
from psycopg import sql

from eventstore.bench.drain import peak_rss_mb, prefill
from eventstore.bench.launch import child, child_env, head, server_pids
from eventstore.bench.writepath import CpuMeter
from eventstore.core.errors import BrokerError
from eventstore.core.records import RecordedEvent
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedServers
from eventstore.kafka.config import producer_config
from eventstore.postgres import eventlog
from eventstore.postgres.migrate import upgrade
from eventstore.projection.projector import Projector
from eventstore.projection.publisher import SAVE_CHECKPOINT, Publisher
from eventstore.wire.envelope import Headers

VARIANTS = ("none", "before", "log", "handoff")
STALL_TIMEOUT = 60.0


# -- the baseline: the previous publisher's page, as it was -----------------------------------------------
def legacy_encode(ev: RecordedEvent, max_bytes: int) -> tuple[bytes, bytes, Headers]:
    """The previous ``encode_committed``: a dict per event and ``json.dumps`` with its own encoder."""
    body = {
        "position": ev.position, "event_id": str(ev.event_id), "stream": ev.stream, "version": ev.version,
        "type": ev.type, "schema_version": ev.schema_version, "payload": ev.payload, "agent_id": ev.agent_id,
        "idempotency_key": ev.idempotency_key, "correlation_id": str(ev.correlation_id),
        "causation_id": None if ev.causation_id is None else str(ev.causation_id),
        "occurred_at": None if ev.occurred_at is None else ev.occurred_at.isoformat(),
        "recorded_at": ev.recorded_at.isoformat(), "lease_resource": ev.lease_resource,
        "fencing_token": ev.fencing_token,
        "prev_hash": None if ev.prev_hash is None else ev.prev_hash.hex(),
        "hash": None if ev.hash is None else ev.hash.hex(),
    }
    headers: Headers = [("es-format", "eventstore.committed/1"), ("es-position", str(ev.position)),
                        ("es-stream-version", str(ev.version)), ("es-type", ev.type)]
    value = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    if len(value) > max_bytes:
        stub = {"position": ev.position, "event_id": str(ev.event_id), "stream": ev.stream, "version": ev.version,
                "type": ev.type, "schema_version": ev.schema_version, "payload_omitted": True, "size": len(value)}
        value = json.dumps(stub, separators=(",", ":"), ensure_ascii=False).encode()
    return ev.stream.encode(), value, headers


class LegacyPublisher(Publisher):
    """The previous publisher's page loop (read_all + legacy_encode + a callback per message); leading,
    checkpoints and retries are the current class's."""

    def run(self) -> None:
        self._legacy_producer = Producer(producer_config(self.settings))
        super().run()

    def _publish_page(self, conn: psycopg.Connection[Any], producer: Producer) -> bool:
        producer = self._legacy_producer
        with conn.cursor() as cur:
            events = eventlog.read_all(cur, self.position, self.page)
        if not events:
            return False
        failures: list[str] = []

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(err.str())

        for ev in events:
            key, value, headers = legacy_encode(ev, self.settings.max_committed_bytes)
            while True:
                try:
                    producer.produce(self.topic, value=value, key=key, headers=headers, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.01)
        if producer.flush(30) or failures:
            raise BrokerError(f"committed topic did not take events after position {self.position}: {failures[:1]}")
        self.position = events[-1].position
        self.published += len(events)
        conn.execute(SAVE_CHECKPOINT, (self.name, self.position))
        self.acked = self.saved = self.position
        return True


def handed_to_produced(handed: list[tuple[int, int, float]], pages: list[tuple[int, int, float, float]]) -> str:
    """The publisher's own share of commit -> produced, per event: from the projector handing the batch over
    (after its COMMIT returned) to the publisher's produce call, and from taking the page to producing it."""
    at: dict[int, float] = {}
    for first, last, t in handed:
        at.update(dict.fromkeys(range(first, last + 1), t))
    waits = sorted((produced - at[p]) * 1000 for first, last, _, produced in pages
                   for p in range(first, last + 1) if p in at)
    own = sorted((produced - taken) * 1000 for first, last, taken, produced in pages for _ in range(first, last + 1))
    if not waits or not own:
        return "handed -> produced: no samples"

    def pct(v: list[float], p: int) -> float:
        return v[min(len(v) - 1, len(v) * p // 100)]

    return (f"handed -> produced p50 {pct(waits, 50):.2f} ms p90 {pct(waits, 90):.2f} p99 {pct(waits, 99):.2f} "
            f"({len(waits)} events); taken -> produced p50 {pct(own, 50):.2f} ms p99 {pct(own, 99):.2f}; "
            f"{len(pages)} pages")


def run_projector(variant: str) -> int:
    """The projector process of one variant (``python -m eventstore.bench.publishing VARIANT``)."""
    settings = Settings.from_env()
    projector = Projector(settings, publish=variant not in ("before", "none"),
                          hand_off=variant in ("handoff", "pipelined", "every-page", "flush-each"))
    if variant == "every-page" and projector.publisher is not None:
        # The previous round's publisher: waits for the broker and stores the checkpoint after every page.
        projector.publisher.pipeline = False
        projector.publisher.checkpoint_every = 0.0
    if variant == "flush-each" and projector.publisher is not None:
        projector.publisher.pipeline = False  # waits for the broker every page, checkpoint every 0.25 s
    if variant in ("pipelined", "every-page", "flush-each") and projector.publisher is not None:
        projector.publisher.trace, projector.publisher.local.trace = [], []
    legacy = LegacyPublisher(settings) if variant == "before" else None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    projector.start()
    if legacy is not None:
        legacy.start()
    while not stop.wait(0.2) and not projector.finished.is_set():
        pass
    if legacy is not None:
        legacy.stop()
    projector.stop()
    projector.raise_if_failed()
    pub = projector.publisher
    if pub is not None:
        print(f"published {pub.published}: {pub.from_memory} from memory, {pub.from_log} from the log, "
              f"{pub.chain_misses} chain misses, {pub.local.dropped} dropped from the hand-off", flush=True)
        if pub.trace is not None and pub.local.trace is not None:
            print(handed_to_produced(pub.local.trace, pub.trace), flush=True)
    return 0


@contextmanager
def projector_process(settings: Settings, variant: str, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with child([sys.executable, "-m", "eventstore.bench.publishing", variant], child_env(settings), log_path,
               grace=30) as proc:
        yield proc


# -- one measured drain ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Round:
    variant: str
    events: int
    seconds: float
    publisher_lag: float  # seconds between the log holding everything and the checkpoint reaching it
    cpu: dict[str, float]
    rss: float
    ok: bool
    detail: str

    def us(self, part: str) -> float:
        return self.cpu.get(part, 0.0) / self.events * 1e6


def checkpoint(conn: psycopg.Connection[Any], name: str) -> int:
    row = conn.execute("SELECT position FROM publisher_checkpoints WHERE name = %s", (name,)).fetchone()
    return int(row[0]) if row else 0


def one_round(base: Settings, admin_url: str, variant: str, n: int, pids: dict[str, int], logdir: Path,
              tag: str) -> Round:
    """A fresh database, n events pre-filled into a fresh intake topic, one projector process draining them."""
    dbname = f"bench_pub_{tag}_{variant}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    parts = urlsplit(admin_url)
    url = urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))
    upgrade(url)
    settings = base.with_servers(url, base.require_servers()[1]).replace(
        namespace=f"pub-{tag}-{variant}", projector_group=f"pub-{tag}-{variant}")
    prefill(settings, n)
    with psycopg.connect(url, autocommit=True) as conn, \
            projector_process(settings, variant, logdir / f"projector-{tag}-{variant}.log") as proc:
        deadline = time.monotonic() + 120
        while head(conn) == 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the {variant} projector committed nothing; see {logdir}")
            time.sleep(0.002)
        cpu = CpuMeter({**pids, "projector process": proc.pid})
        first = head(conn)
        cpu.start()
        t0 = time.perf_counter()
        logged_at: float | None = None
        last, progress_at = (0, 0), time.monotonic()
        def progress() -> tuple[int, int]:
            return head(conn), (n if variant == "none" else checkpoint(conn, settings.committed_topic))

        while (now := progress()) != (n, n):
            if logged_at is None and now[0] == n:
                logged_at = time.perf_counter()
            if now != last:
                last, progress_at = now, time.monotonic()
            elif time.monotonic() - progress_at > STALL_TIMEOUT:
                raise RuntimeError(f"{variant}: stalled at log {now[0]}, published {now[1]} of {n}")
            time.sleep(0.005)
        done = time.perf_counter()
        cpu.stop()
        rss = peak_rss_mb(proc.pid)
        high = conn.execute("SELECT count(*), max(position) FROM events").fetchone() or (0, 0)
    ok = tuple(high) == (n, n)
    return Round(variant, n - first, done - t0, done - (logged_at or done), cpu.used, rss, ok,
                 f"log {high[0]} events (expected {n}), checkpoint {n}")


def conditions(url: str) -> None:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT version(), current_setting('synchronous_commit'), current_setting('fsync')"
                           ).fetchone()
    print("Conditions")
    print(f"  machine   : {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}; "
          f"load average {os.getloadavg()[0]:.2f} (shared: wall rates wander, ratios of this run count)")
    if row:
        print(f"  PostgreSQL: {row[0].split(',')[0]} embedded, synchronous_commit={row[1]}, fsync={row[2]}")
    print("  broker    : tansu (embedded, in-memory storage); everything on this machine")


def main(events: int = 100_000, rounds: int = 2, variants: tuple[str, ...] = VARIANTS) -> int:
    """Drain ``events`` per variant, ``rounds`` interleaved rounds; 0 when every round was correct."""
    tag = uuid.uuid4().hex[:6]
    logdir = Path(tempfile.mkdtemp(prefix="eventstore-bench-publisher-"))
    print(f"eventstore publisher benchmark: {rounds} rounds x {len(variants)} variants x {events:,} events "
          f"drained by one projector process (publisher thread inside); logs in {logdir}", flush=True)
    results: list[Round] = []
    with EmbeddedServers(None) as servers:
        url = servers.postgres.url
        conditions(url)
        base = Settings.from_env().with_servers(url, servers.broker.bootstrap)
        with psycopg.connect(url, autocommit=True) as conn:
            pids = server_pids(servers, conn)
        for r in range(rounds):
            for variant in variants:
                res = one_round(base, url, variant, events, pids, logdir, f"{tag}{r}")
                results.append(res)
                print(f"  round {r + 1} {variant:8s}: projector process {res.us('projector process'):6.1f} us CPU "
                      f"per event, postgres {res.us('postgres'):5.1f}, tansu {res.us('tansu'):5.1f}; "
                      f"{res.events / res.seconds:8,.0f} events/s until published (publisher done "
                      f"{res.publisher_lag:.2f} s after the log); peak RSS {res.rss:,.0f} MiB; "
                      f"{'PASS' if res.ok else 'FAIL'}", flush=True)
    print(f"\nSummary (median of {rounds} rounds; load average now {os.getloadavg()[0]:.2f})")
    med = {v: {part: statistics.median(r.us(part) for r in results if r.variant == v)
               for part in ("projector process", "postgres", "tansu")} for v in variants}
    reference = med.get("before", med[variants[0]])["projector process"]
    for v in variants:
        mine = med[v]["projector process"]
        share = "" if v == "none" or "none" not in med else \
            f"; publishing adds {mine - med['none']['projector process']:5.1f} us"
        print(f"  {v:8s}: projector process {mine:6.1f} us CPU per event = {mine / reference:.2f}x "
              f"{'before' if 'before' in med else variants[0]}{share}; postgres {med[v]['postgres']:5.1f} us, "
              f"tansu {med[v]['tansu']:5.1f} us")
    if {"none", "before", "handoff"} <= set(med):
        none, before, handoff = (med[v]["projector process"] for v in ("none", "before", "handoff"))
        print(f"  saved by the hand-off and the new reader: {before - handoff:.1f} us per event "
              f"({1 - handoff / before:.0%} of the projector process's CPU); the publisher's own cost "
              f"{(handoff - none) / max(before - none, 1e-9):.2f}x what it was")
    handoff_log = logdir / f"projector-{tag}0-handoff.log"
    for line in handoff_log.read_text().splitlines()[-3:] if handoff_log.exists() else []:
        if line.startswith("published"):
            print(f"  handoff round 1: {line}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(run_projector(sys.argv[1]))
