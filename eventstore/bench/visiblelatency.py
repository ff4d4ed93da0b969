"""emit -> visible in a subscriber's local view by the subscriber's fetch wait, with what each wait costs the
broker while nothing happens, right after a throughput run (issue 11, aim 5).

``eventstore bench visible`` starts fresh embedded servers and a projector process (as deployed), drains a
pre-filled intake topic (the throughput run), then runs one subscriber at a time with each
``EVENTSTORE_SUBSCRIBER_FETCH_WAIT_MS`` in turn, ``rounds`` times alternately (A, B, C, A, B, C ...), each
on a consumer group of its own: the broker's CPU while the subscriber (and the projector) wait on idle
topics, then ``events`` emits at ``rate``/s split at the database's ``recorded_at``, the publisher's produce
and the consumer's hand-over (bench/viewtiming.py). The summary merges the rounds per wait, with each
wait's ratio against 10 ms (the default) of the same run.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import psycopg

from consumers.checkpoints import MemoryCheckpoint
from eventstore.bench import agents as bench_agents
from eventstore.bench.brokerlatency import _meter, idle_cpu, settle, timed_projector
from eventstore.bench.drain import prefill
from eventstore.bench.subscribers import measure_latency
from eventstore.bench.viewtiming import SPLIT, TimedSubscriber, TimedView, split
from eventstore.bench.writepath import CpuMeter, Latency, head, postmaster_pid
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedServers
from eventstore.postgres.migrate import upgrade
from eventstore.sdk.client import AgentClient

BASELINE_WAIT = 10  # ms: consumer_config's fetch.wait.max.ms, the subscribers' default


def main(heavy: int = 100_000, rate: int = 1000, events: int = 2000, waits: tuple[int, ...] = (10, 5, 2),
         rounds: int = 2) -> int:
    """The throughput run, then each subscriber fetch wait ``rounds`` times alternately; a summary."""
    print(f"emit -> visible benchmark: throughput run {heavy:,} events, then per subscriber fetch.wait.max.ms "
          f"{', '.join(map(str, waits))} x {rounds} rounds alternately, {events} events at {rate}/s each "
          f"(baseline {BASELINE_WAIT} ms, the default); load average {os.getloadavg()[0]:.2f} "
          f"({os.cpu_count()} CPUs, shared machine)", flush=True)
    logdir = Path(tempfile.mkdtemp(prefix="eventstore-visible-"))
    merged: dict[int, dict[str, list[float]]] = {w: {k: [] for k in ("total", *SPLIT)} for w in waits}
    idles: dict[int, list[float]] = {w: [] for w in waits}
    tansu: dict[int, list[float]] = {w: [] for w in waits}
    failed = 0
    with EmbeddedServers(None) as servers:
        upgrade(servers.postgres.url)
        settings = Settings.from_env().with_servers(servers.postgres.url, servers.broker.bootstrap).replace(
            namespace="vis", projector_group="vis")
        with psycopg.connect(servers.postgres.url, autocommit=True) as conn:
            postmaster = postmaster_pid(conn)
            client = AgentClient("vis-agent", settings, credential=str(bench_agents.credential(settings, "vis-agent")))
            try:
                with timed_projector(settings, settings.projector_fetch_wait_ms, logdir) as proj:
                    cpu = _meter(servers, postmaster, proj)
                    settle(client, "vis")
                    start = head(conn)
                    t0 = time.monotonic()
                    prefill(settings, heavy)
                    while head(conn) < start + heavy:
                        if time.monotonic() - t0 > 600 or proj.proc.poll() is not None:
                            raise RuntimeError("the throughput run was not drained within 600 s")
                        time.sleep(0.02)
                    proj.take()  # forget what the projector noted (not used here)
                    print(f"\n1) throughput run drained: {heavy:,} events in {time.monotonic() - t0:.1f} s; "
                          f"load {os.getloadavg()[0]:.2f}", flush=True)
                    print(f"\n2) per subscriber fetch wait, alternately (projector fetch wait "
                          f"{settings.projector_fetch_wait_ms} ms)", flush=True)
                    for r in range(rounds):
                        for w in waits:
                            failed += _round(settings, conn, client, cpu, w, r, events, rate, merged[w],
                                             idles[w], tansu[w])
                        proj.take()
            finally:
                client.close()
    _summary(merged, idles, tansu, rate)
    print(f"\ncorrectness: {'PASS' if failed == 0 else 'FAIL'} ({failed} emitted events not COMMITTED or never "
          f"visible); load average after the run {os.getloadavg()[0]:.2f}; logs in {logdir}")
    return 0 if failed == 0 else 1


def _round(settings: Settings, conn: psycopg.Connection[tuple[object, ...]], client: AgentClient,
           meter: CpuMeter, wait: int, r: int, events: int, rate: int, into: dict[str, list[float]],
           idles: list[float], tansu: list[float]) -> int:
    """One subscriber with this fetch wait: its idle cost, then emit -> visible at the rate; failures."""
    s = settings.replace(subscriber_fetch_wait_ms=wait)
    start = head(conn)
    view = TimedView()
    sub = TimedSubscriber(f"vis-{r}-{wait}", view=view, settings=s, checkpoint=MemoryCheckpoint(start))
    sub.start()
    try:
        if not sub.live.wait(60):
            raise RuntimeError(f"the subscriber with fetch wait {wait} ms did not start following within 60 s")
        time.sleep(1.0)  # the consumer is assigned and fetching
        idle = idle_cpu(meter)
        sent_wall: dict[int, float] = {}
        meter.start()
        steady, _, _ = measure_latency(client, view, events, rate, f"v{r}w{wait}", sent_wall)
        meter.stop()
        tansu.append(meter.used.get("tansu", 0.0) / events * 1e6)
        idles.append(idle)
        into["total"] += steady.samples
        parts = split(sent_wall, view, sub)
        for name, part in parts:
            into[name] += part.samples
        cut = ", ".join(f"{name.split(' (')[0]} {part.pct(50):.1f}" for name, part in parts if part.samples)
        print(f"  [round {r + 1}, {wait:>2} ms] emit -> visible {steady.line()}; load {os.getloadavg()[0]:.2f}\n"
              f"  [round {r + 1}, {wait:>2} ms]   p50 split ms: {cut}; tansu idle {idle:.1f}% of a core, "
              f"{tansu[-1]:.0f} µs/event at the rate", flush=True)
        return steady.failed
    finally:
        sub.stop()


def _summary(merged: dict[int, dict[str, list[float]]], idles: dict[int, list[float]],
             tansu: dict[int, list[float]], rate: int) -> None:
    print(f"\nSummary (rounds merged; aim at {rate}/s: emit -> visible p50 <= 15 ms)")
    print("  fetch wait | visible p50 / p99 ms | emit->recorded | recorded->produced | produced->fetched | "
          f"fetched->visible | tansu idle % | tansu µs/event | vs {BASELINE_WAIT} ms p50 / p99")
    base = merged.get(BASELINE_WAIT)
    for w, parts in merged.items():
        total = Latency(sorted(parts["total"]), 0)
        if not total.samples:
            print(f"  {w:>7} ms | nothing visible")
            continue
        ratio = ""
        if base is not None and base["total"] and w != BASELINE_WAIT:
            b = Latency(sorted(base["total"]), 0)
            ratio = f"{total.pct(50) / b.pct(50):.2f}x / {total.pct(99) / b.pct(99):.2f}x"
        cols = " | ".join(f"{Latency(sorted(parts[k]), 0).pct(50) if parts[k] else 0:.1f}" for k in SPLIT)
        idle = sum(idles[w]) / max(len(idles[w]), 1)
        per = sum(tansu[w]) / max(len(tansu[w]), 1)
        print(f"  {w:>7} ms | {total.pct(50):8.1f} / {total.pct(99):6.1f} | {cols} | {idle:12.1f} | "
              f"{per:14.0f} | {ratio}", flush=True)
