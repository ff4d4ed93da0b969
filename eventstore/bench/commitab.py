"""The projector's Kafka offset commits at a steady rate: after every batch (before Round 4) against at most
every ``KAFKA_COMMIT_SECONDS`` (now), alternately on one broker, in one run.

At 1,000 events/s the projector writes 150-250 small batches a second; a Kafka commit after each is an
OffsetCommit request the broker must take, though Kafka offsets are only a hint (PostgreSQL holds the real
ones). Each run gets fresh topics (a topic's history slows tansu, so runs one after another on one topic would
not compare) and prints its split and tail (``eventstore.bench.brokerlatency``); the summary gives the broker's
and the projector's CPU per event, p50 / p99, and each pair's ratio.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from eventstore.bench.brokerlatency import (
    _meter,
    idle_cpu,
    settle,
    split_run,
    timed_client,
    timed_projector,
)
from eventstore.bench.latencysplit import Split, print_split
from eventstore.bench.launch import proc_cpu
from eventstore.bench.tailsplit import GcPauses, PgLogReader, RunDelayMeter, TailProbes
from eventstore.bench.writepath import publish_from_head
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedServers
from eventstore.kafka.config import ensure_topics, projector_consumer_config
from eventstore.projection.projector import KAFKA_COMMIT_SECONDS

VARIANTS = (("every batch", 0.0), (f"every {KAFKA_COMMIT_SECONDS:g} s", KAFKA_COMMIT_SECONDS))


def commit_ab(servers: EmbeddedServers, settings: Settings, conn: Any, postmaster: int, logdir: Path,
              agent_gc: GcPauses, pg_log: PgLogReader, events: int, rate: int, rounds: int = 2) -> Split:
    """Each variant ``rounds`` times, alternately (A B A B ...), on fresh topics of the same broker; the merged
    runs, for the correctness count."""
    print(f"\n3b) the projector's Kafka commit: {VARIANTS[0][0]} (A, before) vs {VARIANTS[1][0]} (B, now), "
          f"{rounds} rounds alternately, each on fresh topics", flush=True)
    runs: dict[str, list[Split]] = {name: [] for name, _ in VARIANTS}
    for r in range(rounds):
        for name, every in VARIANTS:
            tag = f"k{r}{'a' if every == 0 else 'b'}"
            ns = settings.replace(namespace=f"lat-{tag}", projector_group=f"lat-{tag}")
            client, woke = timed_client(f"lat-agent-{tag}", ns)
            publish_from_head(conn, ns)
            try:
                with timed_projector(ns, ns.projector_fetch_wait_ms, logdir,
                                     {"EVENTSTORE_BENCH_KAFKA_COMMIT_SECONDS": str(every)}) as proj:
                    cpu = _meter(servers, postmaster, proj)
                    tails = TailProbes(agent_gc, pg_log, RunDelayMeter(cpu.pids.copy()))
                    settle(client, tag)
                    idle = idle_cpu(cpu)
                    sp = split_run(client, woke, proj, cpu, events, rate, tag, tails)
            finally:
                client.close()
            print_split(f"commit {name}, round {r + 1}", sp, idle)
            runs[name].append(sp)
    print(f"  summary (load {os.getloadavg()[0]:.2f}): per round, A = {VARIANTS[0][0]}, B = {VARIANTS[1][0]}")
    merged = Split()
    a_runs, b_runs = runs[VARIANTS[0][0]], runs[VARIANTS[1][0]]
    for r, (a, b) in enumerate(zip(a_runs, b_runs, strict=False)):
        if not (a.total and b.total):
            continue
        ta, tb = a.lat(a.total), b.lat(b.total)
        print(f"    round {r + 1}: p50 {ta.pct(50):.1f} vs {tb.pct(50):.1f} ms ({tb.pct(50) / ta.pct(50):.2f}x), "
              f"p99 {ta.pct(99):.1f} vs {tb.pct(99):.1f} ms ({tb.pct(99) / ta.pct(99):.2f}x); CPU µs/event "
              f"tansu {a.cpu_us.get('tansu', 0):.0f} vs {b.cpu_us.get('tansu', 0):.0f}, projector "
              f"{a.cpu_us.get('projector', 0):.0f} vs {b.cpu_us.get('projector', 0):.0f}, batches "
              f"{len(a.batch_sizes)} vs {len(b.batch_sizes)}", flush=True)
    for sp in a_runs + b_runs:
        merged.merge(sp)
    commit_cost(servers, settings)
    return merged


def commit_cost(servers: EmbeddedServers, settings: Settings, per_second: int = 230, seconds: float = 4.0,
                rounds: int = 3) -> None:
    """The broker alone: its CPU while a projector-configured consumer waits on an idle 8-partition topic,
    without commits (A) and committing offsets asynchronously ``per_second`` times a second (B, as after every
    batch at 1,000 events/s), alternately, each on a group of its own."""
    pid = servers.broker.pid
    if pid is None:
        return
    ns = settings.replace(namespace="lat-commit-cost")
    ensure_topics(ns, {ns.intake_topic: ns.intake_partitions})
    parts = ns.intake_partitions
    print(f"  the broker alone: tansu's CPU, % of a core, with a consumer idle (A) and committing {per_second}/s "
          f"(B), {seconds:g} s each, alternately", flush=True)
    for r in range(rounds):
        used: dict[str, float] = {}
        for mode in ("A", "B"):
            c = Consumer(projector_consumer_config(ns, f"commit-cost-{r}-{mode}"))
            try:
                c.assign([TopicPartition(ns.intake_topic, p, 0) for p in range(parts)])
                time.sleep(1.0)
                before, t0, n = proc_cpu(pid), time.monotonic(), 0
                while (now := time.monotonic()) - t0 < seconds:
                    c.poll(max(0.0, t0 + n / per_second - now) if mode == "B" else 0.05)
                    if mode == "B" and now >= t0 + n / per_second:
                        c.commit(offsets=[TopicPartition(ns.intake_topic, n % parts, n)], asynchronous=True)
                        n += 1
                used[mode] = (proc_cpu(pid) - before) / seconds * 100
            finally:
                c.close()
            if mode == "B":
                extra = (used["B"] - used["A"]) / 100 / max(n / seconds, 1) * 1e6
                print(f"    round {r + 1}: A {used['A']:.1f}%, B {used['B']:.1f}% ({n / seconds:.0f} commits/s): "
                      f"{extra:.0f} µs of tansu CPU per commit; load {os.getloadavg()[0]:.2f}", flush=True)
