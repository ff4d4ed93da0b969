"""The broker alone (tansu, no projector): produce -> consume latency by fetch wait, how a partition's
stored history slows fetches, and what a smaller fetch wait costs the broker while nothing happens.
Sections 4-6 of ``eventstore bench latency``."""

from __future__ import annotations

import os
import struct
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from eventstore.bench.launch import proc_cpu
from eventstore.bench.writepath import Latency
from eventstore.core.settings import Settings
from eventstore.kafka.config import PRODUCER_DEFAULTS, ensure_topics, projector_consumer_config

PROBE_SETTINGS = ((10, 1), (5, 1), (2, 1), (1, 1), (0, 1))


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


def probes(bootstrap: str, label: str) -> None:
    admin_settings = Settings.from_env().with_servers("postgresql://unused", bootstrap)
    for fw, mb in PROBE_SETTINGS:
        topic = f"probe-{uuid.uuid4().hex[:8]}"
        ensure_topics(admin_settings, {topic: 1})
        lat = broker_probe(bootstrap, topic, fw, mb)
        print(f"  [{label}] fresh topic, fetch.wait.max.ms={fw:<4} fetch.min.bytes={mb:<6}: {lat.line()}",
              flush=True)


def history_probe(bootstrap: str, sizes: tuple[int, ...] = (0, 3000, 10_000)) -> None:
    """The probe (fetch.wait.max.ms=10) on one partition as it fills with messages sent one produce
    request each (as the SDK sends sparse emits: one stored batch per message) or batched (linger 50 ms),
    with tansu's CPU during each probe: tansu's fetch cost grows with the partition's stored batches."""
    admin_settings = Settings.from_env().with_servers("postgresql://unused", bootstrap)
    pid = _tansu_pid(bootstrap)
    for single in (False, True):
        topic = f"history-{uuid.uuid4().hex[:8]}"
        ensure_topics(admin_settings, {topic: 1})
        producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS, "linger.ms": 0 if single else 50})
        stored = 0
        for size in sizes:
            for _ in range(size - stored):
                producer.produce(topic, value=b"x" * 200, partition=0)
                if single:
                    producer.flush(5)  # one produce request, so one stored batch, per message
            producer.flush(30)
            stored = size
            before = proc_cpu(pid) if pid else 0.0
            lat = broker_probe(bootstrap, topic, 10, 1)
            used = (proc_cpu(pid) - before) if pid else 0.0
            kind = "one batch per message" if single else "batched (linger 50 ms)"
            print(f"  partition holding {size:>6,} messages, {kind:<22}: {lat.line()}; tansu CPU during the probe "
                  f"{used * 1000:.0f} ms; load {os.getloadavg()[0]:.2f}", flush=True)


def fetch_wait_cost(bootstrap: str, waits: tuple[int, ...], rounds: int = 2, seconds: float = 4.0,
                    rate: int = 1000) -> None:
    """The broker's CPU by fetch wait, alternately: while a consumer group member with the projector's
    consumer settings waits on an idle eight-partition topic (percent of one core), and while a producer
    sends it ``rate`` messages a second one produce request each, as the SDK sends sparse emits (CPU
    µs per message, broker-side). Each run uses a fresh topic, so the topic's history is the same."""
    settings = Settings.from_env().with_servers("postgresql://unused", bootstrap)
    pid = _tansu_pid(bootstrap)
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS, "linger.ms": 0})
    idle: dict[int, list[float]] = {w: [] for w in waits}
    busy: dict[int, list[float]] = {w: [] for w in waits}

    def cpu() -> float:
        return proc_cpu(pid) if pid else 0.0

    for _ in range(rounds):
        for w in waits:
            topic = f"cost-{uuid.uuid4().hex[:8]}"
            ensure_topics(settings, {topic: 8})
            consumer = Consumer(projector_consumer_config(settings.replace(projector_fetch_wait_ms=w),
                                                          f"cost-{uuid.uuid4().hex[:6]}"))
            consumer.subscribe([topic])
            got = 0
            t_end = time.monotonic() + 3  # join the group first
            while time.monotonic() < t_end:
                consumer.poll(0.1)
            before = cpu()
            t_end = time.monotonic() + seconds
            while time.monotonic() < t_end:
                consumer.poll(0.1)
            idle[w].append((cpu() - before) / seconds * 100)
            before = cpu()
            n = int(seconds * rate)
            t0 = time.monotonic()
            for i in range(n):
                while time.monotonic() < t0 + i / rate:
                    m = consumer.poll(0)
                    got += m is not None and m.error() is None
                producer.produce(topic, value=b"x" * 500, key=str(i).encode())
                producer.flush(1)
            while got < n and time.monotonic() < t0 + seconds + 10:
                m = consumer.poll(0.05)
                got += m is not None and m.error() is None
            busy[w].append((cpu() - before) / n * 1e6)
            consumer.close()
    for w in waits:
        print(f"  fetch.wait.max.ms={w:<3}: tansu {_mean(idle[w]):5.1f}% of a core while idle "
              f"({', '.join(f'{u:.1f}' for u in idle[w])}), {_mean(busy[w]):4.0f} µs per message at {rate}/s "
              f"({', '.join(f'{u:.0f}' for u in busy[w])}); load {os.getloadavg()[0]:.2f}", flush=True)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _tansu_pid(bootstrap: str) -> int | None:
    port = bootstrap.rsplit(":", 1)[-1]
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"broker" in cmd and any(c.endswith(f":{port}".encode()) for c in cmd):
                return int(d.name)
    return None
