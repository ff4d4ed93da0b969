"""``eventstore bench agent``: what one ``emit`` costs the agent, against the floor of the same run.

On fresh embedded servers, in interleaved rounds (median of 3), each on a fresh client:

1. the floor: a bare confluent-kafka producer with the SDK's producer settings sending the SDK's own
   signed bytes for the same events (no building, no validation, no signing, no handle): what
   librdkafka alone costs this process per event;
2. ``emit()`` one call per event, and ``emit_many()`` in batches of 1,000;
3. with a projector process deciding them: ``emit_many`` / ``emit`` and then every handle's
   ``result()``, so the outcome listener's work (wake-ups, lookups, resolving handles) is counted too;
4. emit -> outcome latency at a steady rate (``emit()`` then the handle's outcome, as ``bench
   latency`` measures it), with the SDK's producer settings and with ``linger.ms=1`` (the earlier
   setting) in alternating rounds: batching for load must not cost a lone event its latency.

CPU is this process's (all threads, librdkafka's included) from the first call until the broker
acknowledged everything (1, 2) or every outcome arrived (3), per event, also split by thread (the calling
thread, the producer poller, the outcome listener, librdkafka's threads) and the garbage collector's share;
tansu's CPU comes from /proc. Each figure starts after a full collection, so the events the benchmark just
built are not collected at the SDK's expense.
The machine is shared: the load average is printed, and the ratios to the floor of the same run count.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from eventstore.bench import agents as bench_agents
from eventstore.bench.threadcpu import GcPauses, ThreadCpu
from eventstore.bench.writepath import CpuMeter, Latency, latency, make_events, projector, wait_ready
from eventstore.core.auth import Credential
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedServers
from eventstore.examples.inventory import InventoryAdjusted
from eventstore.kafka.config import agent_producer_config, ensure_topics
from eventstore.postgres.migrate import upgrade
from eventstore.sdk.client import AgentClient, build_envelope
from eventstore.wire.envelope import encode

Events = list[tuple[InventoryAdjusted, str]]
BATCH = 1000


@dataclass(frozen=True)
class Figure:
    """Per event: wall time of the calls, CPU of this process, CPU of the broker (µs), and this process's
    CPU by thread role (µs; see bench/threadcpu.py)."""

    wall: float
    cpu: float
    broker: float
    threads: dict[str, float] = field(default_factory=dict)
    gc: float = 0.0  # CPU µs per event in the garbage collector (any thread; part of ``cpu``)
    full_gcs: float = 0.0  # full collections during the figure


def _median(samples: list[Figure]) -> Figure:
    roles = sorted({r for f in samples for r in f.threads})
    return Figure(statistics.median(f.wall for f in samples), statistics.median(f.cpu for f in samples),
                  statistics.median(f.broker for f in samples),
                  {r: statistics.median(f.threads.get(r, 0.0) for f in samples) for r in roles},
                  statistics.median(f.gc for f in samples), statistics.median(f.full_gcs for f in samples))


def _measure(n: int, broker: CpuMeter, send: Callable[[], None], finish: Callable[[], None]) -> Figure:
    threads, pauses = ThreadCpu(), GcPauses()
    gc.collect()  # the events just built (the caller's objects) are not the SDK's collections to pay for
    broker.start()
    threads.start()
    pauses.start()
    c0, t0 = time.process_time(), time.perf_counter()
    send()
    wall = time.perf_counter() - t0
    threads.sample()
    finish()
    cpu = time.process_time() - c0
    pauses.stop()
    threads.stop()
    broker.stop()
    return Figure(wall / n * 1e6, cpu / n * 1e6, broker.used.get("tansu", 0.0) / n * 1e6,
                  {r: v / n * 1e6 for r, v in threads.used.items()}, pauses.seconds / n * 1e6, pauses.full)


def signed_values(events: Events, agent_id: str, cred: Credential) -> list[tuple[bytes, bytes, Any]]:
    """The SDK's exact (key, value, headers) for these events, built before the clock starts."""
    out = []
    for e, s in events:
        env = build_envelope(agent_id, e, s, expected_version=None, idempotency_key=None, correlation_id=None,
                             causation_id=None, lease=None)
        out.append(encode(env, cred))
    return out


def floor(settings: Settings, values: list[tuple[bytes, bytes, Any]], broker: CpuMeter,
          **extra: Any) -> Figure:
    """A bare producer with the SDK's settings (plus ``extra``) sending prepared bytes."""
    producer = Producer(agent_producer_config(settings, **extra))
    producer.produce(settings.intake_topic, value=values[0][1], key=values[0][0])  # connect, warm up
    producer.flush(30)

    def send() -> None:
        topic = settings.intake_topic
        for key, value, headers in values:
            while True:
                try:
                    producer.produce(topic, value=value, key=key, headers=headers)
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.poll(0)

    def finish() -> None:
        producer.flush(120)

    return _measure(len(values), broker, send, finish)


def sdk(client: AgentClient, events: Events, broker: CpuMeter, many: bool, outcomes: bool) -> Figure:
    """``emit`` or ``emit_many``, until acknowledged (or, with ``outcomes``, until every outcome arrived)."""
    handles: list[Any] = []

    def send() -> None:
        if many:
            for i in range(0, len(events), BATCH):
                handles.extend(client.emit_many(events[i:i + BATCH]))
        else:
            handles.extend(client.emit(e, s) for e, s in events)

    def finish() -> None:
        client.flush(120)
        if outcomes:
            bad = [r for r in (h.result(120) for h in handles) if not r.ok]
            if bad:
                raise RuntimeError(f"{len(bad)} events were not committed, e.g. {bad[0]}")

    return _measure(len(events), broker, send, finish)


def _line(name: str, f: Figure, base: Figure | None) -> str:
    ratio = f"   {f.cpu / base.cpu:5.2f}x the floor's CPU" if base else ""
    split = ", ".join(f"{role} {us:.1f}" for role, us in sorted(f.threads.items(), key=lambda kv: -kv[1])
                      if us >= 0.05)
    return (f"  {name:<34} {f.wall:7.1f} us/event (calls)  {f.cpu:7.1f} us CPU/event  tansu {f.broker:6.1f} "
            f"us/event{ratio}\n  {'':<34} by thread (us CPU/event): {split}; in the collector {f.gc:.1f} us/event "
            f"({f.full_gcs:.0f} full)")


def _merge(runs: list[Latency]) -> Latency:
    return Latency(sorted(x for r in runs for x in r.samples), sum(r.failed for r in runs))


def main(events: int = 20_000, rounds: int = 3, rate: int = 1000, latency_events: int = 2000) -> int:
    """Print the agent's CPU per event by path, against the floor of the same run."""
    run = uuid.uuid4().hex[:6]
    logdir = Path(tempfile.mkdtemp(prefix="eventstore-bench-agent-"))
    print(f"eventstore agent benchmark: {events:,} events per figure, median of {rounds} interleaved rounds; "
          f"logs in {logdir}")
    print(f"  machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}; load "
          f"average {os.getloadavg()[0]:.2f} (shared: absolute figures wander, ratios of this run count)")
    with EmbeddedServers(None) as servers:
        upgrade(servers.postgres.url)
        base = Settings.from_env().with_servers(servers.postgres.url, servers.broker.bootstrap)
        settings = base.replace(namespace=f"agent-{run}", projector_group=f"agent-{run}")
        ensure_topics(settings, {settings.intake_topic: settings.intake_partitions})
        broker = CpuMeter({} if servers.broker.pid is None else {"tansu": servers.broker.pid})
        print(f"  agent producer: {dict(agent_producer_config(settings))}")
        cred = bench_agents.credential(settings, "bench-agent-floor")
        samples: dict[str, list[Figure]] = {}
        print("\n[1] without a projector: until the broker acknowledged every event", flush=True)
        for r in range(rounds):
            evs = make_events(events, f"f{r}", seed=r)
            samples.setdefault("floor", []).append(floor(settings, signed_values(evs, "bench-agent-floor", cred),
                                                         broker))
            for many in (False, True):
                name = "emit_many" if many else "emit"
                with bench_agents.client(f"bench-{name}-{r}", settings) as client:
                    client.emit_many(make_events(BATCH, f"w{name}{r}", seed=7))  # warm: connected, topic known
                    client.flush(60)
                    samples.setdefault(name, []).append(
                        sdk(client, make_events(events, f"{name}{r}", seed=r), broker, many, outcomes=False))
        fl = _median(samples["floor"])
        print(_line("floor: bare producer, prepared bytes", fl, None))
        print(_line("emit(), one call per event", _median(samples["emit"]), fl))
        print(_line(f"emit_many(), batches of {BATCH:,}", _median(samples["emit_many"]), fl))
        print("\n[2] with a projector process: until every outcome arrived at the agent", flush=True)
        with projector(settings, "process", logdir / "projector.log"), \
                bench_agents.client("bench-outcomes", settings) as client:
            wait_ready(client, "aw")
            for r in range(rounds):
                for many in (False, True):
                    name = "emit_many+result" if many else "emit+result"
                    samples.setdefault(name, []).append(
                        sdk(client, make_events(events, f"o{name[:6]}{r}", seed=r), broker, many, outcomes=True))
            print(_line("emit() then result()", _median(samples["emit+result"]), fl))
            print(_line(f"emit_many() ({BATCH:,}) then result()", _median(samples["emit_many+result"]), fl))
            if latency_events <= 0:
                print("\n[3] emit -> outcome latency: skipped (--latency-events 0)")
                return _aim()
            print(f"\n[3] emit -> outcome at {rate:,}/s, {latency_events:,} events per round, 2 alternating rounds "
                  "each", flush=True)
            lat: dict[str, list[Latency]] = {"sdk": [], "linger1": []}
            with bench_agents.client("bench-lat-linger1", settings.replace(
                    kafka_config={**settings.kafka_config, "linger.ms": 1})) as old:
                wait_ready(old, "al")
                for r in range(2):
                    lat["sdk"].append(latency(client, latency_events, rate, f"ls{r}"))
                    lat["linger1"].append(latency(old, latency_events, rate, f"l1{r}"))
            sdk_lat, old_lat = _merge(lat["sdk"]), _merge(lat["linger1"])
            print(f"  SDK settings (linger.ms={agent_producer_config(settings)['linger.ms']}): {sdk_lat.line()}")
            print(f"  linger.ms=1              : {old_lat.line()}")
            if sdk_lat.samples and old_lat.samples:
                print(f"  p50 ratio SDK / linger 1: {sdk_lat.pct(50) / old_lat.pct(50):.2f}x, p99 "
                      f"{sdk_lat.pct(99) / old_lat.pct(99):.2f}x")
    return _aim()


def _aim() -> int:
    print(f"\naim: agent <= 15 us CPU per emit; load average after the run {os.getloadavg()[0]:.2f}")
    return 0
