"""Where emit -> outcome latency goes: the broker's share and our own code's share, in one run.

``eventstore bench latency`` starts fresh embedded servers and measures:

1. produce -> consume through the broker alone (one partition, an ``assign()``ed consumer, produce at a
   steady rate, latency from ``produce()`` to the consumer receiving it) for several
   ``fetch.wait.max.ms`` / ``fetch.min.bytes`` settings, on the fresh broker;
2. emit -> outcome at a steady rate with an in-process projector whose batches are timestamped when the
   consumer hands them over: per event, broker time (emit -> projector has the message) and our time
   (projector has it -> the agent's handle resolved: batch transaction, NOTIFY, listener);
3. heavy traffic: N events pre-filled and drained by the same projector; then 1 and 2 again.

All timestamps are ``time.perf_counter()`` in this one process, so they compare exactly. The projector
runs in a thread here (the agent shares its GIL), so our share is, if anything, overstated.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from eventstore.bench import agents as bench_agents
from eventstore.bench.drain import prefill
from eventstore.bench.writepath import Latency, make_events
from eventstore.core.outcomes import EmitResult, Outcome
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedServers
from eventstore.kafka.config import PRODUCER_DEFAULTS, ensure_topics
from eventstore.postgres.intake import IntakeMessage
from eventstore.postgres.migrate import upgrade
from eventstore.projection.projector import Projector
from eventstore.sdk.client import AgentClient

SETTINGS_TRIED = ((10, 1), (1, 1), (0, 1), (100, 1), (500, 1), (10, 65536))


def broker_probe(bootstrap: str, topic: str, fetch_wait_ms: int, min_bytes: int, n: int = 300,
                 rate: int = 500) -> Latency:
    """produce() -> consumer has it, for n small messages at a steady rate on partition 0."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": fetch_wait_ms,
                         "fetch.min.bytes": min_bytes})
    consumer.assign([TopicPartition(topic, 0, OFFSET_END)])
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS, "linger.ms": 0})
    got: list[float] = []
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            m = consumer.poll(0.05)
            value = None if m is None or m.error() is not None else m.value()
            if value is not None and len(value) == 8:
                got.append(time.perf_counter() - struct.unpack("d", value)[0])

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    time.sleep(1.0)  # the assignment resolves OFFSET_END before anything is produced
    t0 = time.perf_counter()
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        producer.produce(topic, value=struct.pack("d", time.perf_counter()), partition=0)
        producer.poll(0)
    producer.flush(30)
    deadline = time.monotonic() + 5 + fetch_wait_ms / 1000 * 4
    while len(got) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    t.join(5)
    consumer.close()
    return Latency(sorted(got), n - len(got))


class TimedProjector(Projector):
    """A Projector that notes when its consumer hands over each batch (the benchmark's probe only)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.handed: list[tuple[float, list[bytes | None]]] = []

    def _next_batch(self, consumer: Consumer) -> list[IntakeMessage]:
        batch = super()._next_batch(consumer)
        if batch:
            self.handed.append((time.perf_counter(), [m.value for m in batch]))
        return batch


@dataclass(frozen=True)
class Split:
    """Per event: emit -> projector has it (broker), projector has it -> outcome resolved (ours)."""

    broker: Latency
    ours: Latency
    total: Latency


def split_run(client: AgentClient, proj: TimedProjector, n: int, rate: int, prefix: str) -> Split:
    """Emit n events at a steady rate; split each one's emit -> outcome time at the projector hand-over."""
    proj.handed.clear()
    sent: dict[uuid.UUID, float] = {}
    done: dict[uuid.UUID, float] = {}
    lock = threading.Lock()

    def on_done(eid: uuid.UUID) -> Any:
        def cb(f: Future[EmitResult]) -> None:
            if f.exception() is None and f.result().status is Outcome.COMMITTED:
                with lock:
                    done[eid] = time.perf_counter()
        return cb

    handles = []
    t0 = time.perf_counter()
    for i, (e, s) in enumerate(make_events(n, prefix, seed=rate)):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        now = time.perf_counter()
        h = client.emit(e, s)
        sent[h.event_id] = now
        h.future.add_done_callback(on_done(h.event_id))
        handles.append(h)
    for h in handles:
        try:
            h.result(30)
        except Exception:  # counted as failed below
            continue
    handed: dict[uuid.UUID, float] = {}
    for at, values in list(proj.handed):
        for v in values:
            try:
                handed[uuid.UUID(json.loads(v or b"{}")["event_id"])] = at
            except (ValueError, KeyError, TypeError):
                continue
    broker, ours, total = [], [], []
    with lock:
        for eid, t_sent in sent.items():
            if eid in done and eid in handed:
                broker.append(handed[eid] - t_sent)
                ours.append(done[eid] - handed[eid])
                total.append(done[eid] - t_sent)
    failed = n - len(total)
    return Split(Latency(sorted(broker), failed), Latency(sorted(ours), failed), Latency(sorted(total), failed))


def probes(bootstrap: str, label: str) -> None:
    admin_settings = Settings.from_env().with_servers("postgresql://unused", bootstrap)
    for fw, mb in SETTINGS_TRIED:
        topic = f"probe-{uuid.uuid4().hex[:8]}"
        ensure_topics(admin_settings, {topic: 1})
        lat = broker_probe(bootstrap, topic, fw, mb)
        print(f"  [{label}] fresh topic, fetch.wait.max.ms={fw:<4} fetch.min.bytes={mb:<6}: {lat.line()}",
              flush=True)


def aged_topic_probe(bootstrap: str, messages: int, linger_ms: int) -> None:
    """The same probe on one partition that already holds ``messages`` messages produced with
    ``linger_ms`` (tansu's in-memory store keeps one object per produced batch and lists them all on
    every fetch, so its fetch cost grows with the partition's history)."""
    admin_settings = Settings.from_env().with_servers("postgresql://unused", bootstrap)
    topic = f"aged-{uuid.uuid4().hex[:8]}"
    ensure_topics(admin_settings, {topic: 1})
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS, "linger.ms": linger_ms})
    t0 = time.perf_counter()
    for i in range(messages):
        while True:
            try:
                producer.produce(topic, value=b"x" * 100, partition=0)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(120)
    fill = time.perf_counter() - t0
    lat = broker_probe(bootstrap, topic, 10, 1)
    print(f"  topic aged by {messages:,} messages (linger.ms={linger_ms}, produced in {fill:.1f} s), "
          f"fetch.wait.max.ms=10: {lat.line()}", flush=True)


def print_split(label: str, rate: int, sp: Split) -> None:
    print(f"  [{label}] emit -> outcome at {rate}/s, total          : {sp.total.line()}")
    print(f"  [{label}]   emit -> projector has it (broker) : {sp.broker.line()}")
    print(f"  [{label}]   projector has it -> outcome (ours): {sp.ours.line()}", flush=True)


def main(heavy: int = 100_000, rate: int = 1000, events: int = 2000) -> int:
    """Run the probes and the split before and after ``heavy`` events of traffic."""
    print(f"broker latency benchmark: probes of 300 messages at 500/s; split of {events} events at {rate}/s; "
          f"heavy traffic {heavy:,} events; load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs, "
          "shared machine)", flush=True)
    with EmbeddedServers(None) as servers:
        upgrade(servers.postgres.url)
        bootstrap = servers.broker.bootstrap
        settings = Settings.from_env().with_servers(servers.postgres.url, bootstrap).replace(
            namespace="lat", projector_group="lat")
        print("\n1) fresh broker")
        probes(bootstrap, "fresh")
        proj = TimedProjector(settings).start()
        try:
            with bench_agents.client("lat-agent", settings) as client:
                warm_event, warm_stream = make_events(1, "warm", 1)[0]
                client.emit_and_wait(warm_event, warm_stream, timeout=60)
                print_split("fresh", rate, split_run(client, proj, events, rate, "f"))
                print(f"\n2) heavy traffic: {heavy:,} events pre-filled into the same intake topic and drained")
                t0 = time.perf_counter()
                prefill(settings, heavy)
                while proj.stats.committed < heavy + events + 1:
                    if time.perf_counter() - t0 > 600:
                        raise RuntimeError("the heavy traffic was not drained within 600 s")
                    time.sleep(0.05)
                print(f"  drained in {time.perf_counter() - t0:.1f} s", flush=True)
                # The publisher (a thread of this process) may still be sending the backlog to the
                # committed topic: measuring then would time our code against that catch-up.
                target = proj.stats.committed
                while proj.publisher is not None and proj.publisher.position < target:
                    if time.perf_counter() - t0 > 600:
                        raise RuntimeError("the publisher did not catch up within 600 s")
                    time.sleep(0.05)
                print(f"  published in {time.perf_counter() - t0:.1f} s (the publisher caught up)", flush=True)
                print_split("after heavy traffic", rate, split_run(client, proj, events, rate, "h"))
        finally:
            proj.stop()
        probes(bootstrap, "after heavy traffic")
        print("\n3) one partition's history (same broker)")
        for messages, linger in ((0, 0), (20_000, 0), (heavy, 0), (heavy, 20)):
            aged_topic_probe(bootstrap, messages, linger)
    print(f"\nload average after the run {os.getloadavg()[0]:.2f}")
    return 0


