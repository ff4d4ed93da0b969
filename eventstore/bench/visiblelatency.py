"""emit -> visible in a subscriber's local view by the subscriber's fetch wait, and with the commit wake-up,
with what each costs while nothing happens and per event, right after a throughput run (issue 11, aim 5).

``eventstore bench visible`` starts fresh embedded servers and a projector process (as deployed), drains a
pre-filled intake topic (the throughput run), then runs one subscriber at a time in each mode in turn,
``rounds`` times alternately (A, B, C, A, B, C ...), each on a consumer group of its own: a Kafka-only
subscriber with each ``EVENTSTORE_SUBSCRIBER_FETCH_WAIT_MS``, and a woken one (``wake_on_commit``, the
default fetch wait). Per round: the broker's, PostgreSQL's and the subscriber thread's CPU while everything
waits on idle topics, then ``events`` emits at ``rate``/s split at the database's ``recorded_at``, the
publisher's produce and the consumer's hand-over, or for the woken subscriber at the commit notice's arrival
(bench/viewtiming.py), with the subscriber's queries per second and CPU per event. The summary merges the
rounds per mode, with each mode's ratio against the Kafka-only 10 ms subscriber (the default) of the same run.
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
from eventstore.bench.drain import prefill_and_wait
from eventstore.bench.launch import head, postmaster_pid
from eventstore.bench.subscribers import measure_latency
from eventstore.bench.threadcpu import ThreadCpu
from eventstore.bench.viewtiming import SPLIT, SPLIT_WOKEN, TimedSubscriber, TimedView, split, split_woken
from eventstore.bench.writepath import CpuMeter, Latency
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedServers
from eventstore.postgres.migrate import upgrade
from eventstore.sdk.client import AgentClient

BASELINE_WAIT = 10  # ms: consumer_config's fetch.wait.max.ms, the subscribers' default
WAKE = 0  # the mode key of the woken subscriber (default fetch wait, wake_on_commit=True)
MODES = (BASELINE_WAIT, WAKE, 5, 2)  # Kafka-only fetch waits (ms) and the woken subscriber
QUICK_MODES = (BASELINE_WAIT, WAKE)
AFTER = "recorded_at -> visible"  # the subscriber's path after the projector's commit began: what the mode changes
COSTS = ("sub idle %", "sub µs/event", "pg idle %", "pg µs/event", "queries/s idle", "queries/s at rate")


def label(mode: int) -> str:
    return "woken" if mode == WAKE else f"{mode} ms"


def _subscriber_role(name: str | None, comm: str, caller: int, tid: int) -> str:
    return "subscriber" if name is not None and name.startswith("subscriber-") else "other"


def main(heavy: int = 100_000, rate: int = 1000, events: int = 2000,
         waits: tuple[int, ...] = MODES, rounds: int = 2) -> int:
    """The throughput run, then each mode (a fetch wait, or WAKE) ``rounds`` times alternately; a summary."""
    print(f"emit -> visible benchmark: throughput run {heavy:,} events, then per subscriber mode "
          f"{', '.join(map(label, waits))} (Kafka-only by fetch.wait.max.ms; woken: LISTEN on the projector's "
          f"commit notice, fetch wait {BASELINE_WAIT} ms) x {rounds} rounds alternately (A B, B A, ...), "
          f"{events} events at {rate}/s each (baseline Kafka-only {BASELINE_WAIT} ms, the default); load average "
          f"{os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs, shared machine)", flush=True)
    logdir = Path(tempfile.mkdtemp(prefix="eventstore-visible-"))
    merged: dict[int, dict[str, list[float]]] = {
        w: {k: [] for k in ("total", AFTER, *(SPLIT_WOKEN if w == WAKE else SPLIT))} for w in waits}
    idles: dict[int, list[float]] = {w: [] for w in waits}
    tansu: dict[int, list[float]] = {w: [] for w in waits}
    costs: dict[int, dict[str, list[float]]] = {w: {k: [] for k in COSTS} for w in waits}
    paired: dict[int, list[float]] = {BASELINE_WAIT: [], WAKE: []}
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
                    drained = prefill_and_wait(settings, heavy, conn, proj.proc)
                    proj.take()  # forget what the projector noted (not used here)
                    print(f"\n1) throughput run drained: {heavy:,} events in {drained:.1f} s; "
                          f"load {os.getloadavg()[0]:.2f}", flush=True)
                    # tansu slows as the intake partition stores more batches (perf-broker.md), so what runs
                    # first meets the youngest broker: the paired rounds, the fairest comparison, go first.
                    if WAKE in waits and BASELINE_WAIT in waits:
                        print(f"\n2) paired: a Kafka-only {BASELINE_WAIT} ms subscriber and a woken one follow the "
                              "same emits at once (same write path, same broker age)", flush=True)
                        for r in range(rounds):
                            failed += _paired(settings, conn, client, r, events, rate, paired)
                            proj.take()
                    print(f"\n3) per subscriber mode, alternately, with its split and cost (projector fetch wait "
                          f"{settings.projector_fetch_wait_ms} ms)", flush=True)
                    for r in range(rounds):
                        for w in (waits if r % 2 == 0 else waits[::-1]):  # A B, B A: the broker ages as it goes
                            failed += _round(settings, conn, client, cpu, w, r, events, rate, merged[w],
                                             idles[w], tansu[w], costs[w])
                        proj.take()
            finally:
                client.close()
    _summary(merged, idles, tansu, rate, costs)
    _paired_summary(paired)
    print(f"\ncorrectness: {'PASS' if failed == 0 else 'FAIL'} ({failed} emitted events not COMMITTED or never "
          f"visible); load average after the run {os.getloadavg()[0]:.2f}; logs in {logdir}")
    return 0 if failed == 0 else 1


def _round(settings: Settings, conn: psycopg.Connection[tuple[object, ...]], client: AgentClient,
           meter: CpuMeter, wait: int, r: int, events: int, rate: int, into: dict[str, list[float]],
           idles: list[float], tansu: list[float], costs: dict[str, list[float]]) -> int:
    """One subscriber in this mode: its idle cost, then emit -> visible at the rate with its cost; failures."""
    woken = wait == WAKE
    s = settings.replace(subscriber_fetch_wait_ms=BASELINE_WAIT if woken else wait)
    start = head(conn)
    view = TimedView()
    sub = TimedSubscriber(f"vis-{r}-{label(wait).replace(' ', '')}", view=view, settings=s,
                          checkpoint=MemoryCheckpoint(start), wake_on_commit=woken)
    sub.start()
    threads = ThreadCpu(_subscriber_role)
    tag = f"[round {r + 1}, {label(wait):>5}]"
    try:
        if not sub.live.wait(60):
            raise RuntimeError(f"the {label(wait)} subscriber did not start following within 60 s")
        time.sleep(1.0)  # the consumer is assigned and fetching
        queries, t0 = sub.queries, time.monotonic()
        threads.start()
        idle = idle_cpu(meter)  # IDLE_SECONDS of the broker, PostgreSQL and the subscriber thread, all idle
        threads.stop()
        idle_s = time.monotonic() - t0
        costs["sub idle %"].append(threads.used.get("subscriber", 0.0) / idle_s * 100)
        costs["pg idle %"].append(meter.used.get("postgres", 0.0) / idle_s * 100)
        costs["queries/s idle"].append((sub.queries - queries) / idle_s)
        sent_wall: dict[int, float] = {}
        queries, t0 = sub.queries, time.monotonic()
        threads.start()
        meter.start()
        steady, _, _ = measure_latency(client, view, events, rate, f"v{r}w{wait}", sent_wall)
        meter.stop()
        threads.stop()
        busy_s = time.monotonic() - t0
        tansu.append(meter.used.get("tansu", 0.0) / events * 1e6)
        costs["sub µs/event"].append(threads.used.get("subscriber", 0.0) / events * 1e6)
        costs["pg µs/event"].append(meter.used.get("postgres", 0.0) / events * 1e6)
        costs["queries/s at rate"].append((sub.queries - queries) / busy_s)
        idles.append(idle)
        into["total"] += steady.samples
        after = sorted(view.visible_wall[p] - view.recorded[p] for p in sent_wall
                       if p in view.visible_wall and p in view.recorded)
        into[AFTER] += after
        parts = (split_woken if woken else split)(sent_wall, view, sub)
        for name, part in parts:
            into[name] += part.samples
        cut = ", ".join(f"{name.split(' (')[0]} {part.pct(50):.1f}" for name, part in parts if part.samples)
        cost = ", ".join(f"{k} {v[-1]:.1f}" for k, v in costs.items())
        print(f"  {tag} emit -> visible {steady.line()}; load {os.getloadavg()[0]:.2f}\n"
              f"  {tag}   recorded_at -> visible {Latency(after, 0).line()}\n"
              f"  {tag}   p50 split ms: {cut}; tansu idle {idle:.1f}% of a core, {tansu[-1]:.0f} µs/event at "
              f"the rate\n  {tag}   cost: {cost}; {sub.woken} events on notices ({sub.wake_reads} reads, "
              f"{sub.gate.disproved} claims disproved), {sub.repeats_dropped} Kafka repeats dropped", flush=True)
        return steady.failed
    finally:
        sub.stop()


def _paired(settings: Settings, conn: psycopg.Connection[tuple[object, ...]], client: AgentClient, r: int,
            events: int, rate: int, into: dict[int, list[float]]) -> int:
    """Both modes on the same events: emit -> visible of each, and the woken one's share of Kafka's copies."""
    start = head(conn)
    views = {w: TimedView() for w in (BASELINE_WAIT, WAKE)}
    subs = {w: TimedSubscriber(f"pair-{r}-{label(w).replace(' ', '')}", view=views[w],
                               settings=settings.replace(subscriber_fetch_wait_ms=BASELINE_WAIT),
                               checkpoint=MemoryCheckpoint(start), wake_on_commit=w == WAKE).start()
            for w in views}
    try:
        for w, sub in subs.items():
            if not sub.live.wait(60):
                raise RuntimeError(f"the paired {label(w)} subscriber did not start following within 60 s")
        time.sleep(1.0)
        sent_wall: dict[int, float] = {}
        steady, _, _ = measure_latency(client, views[WAKE], events, rate, f"p{r}", sent_wall)
        top = max(sent_wall, default=start)
        views[BASELINE_WAIT].wait_for_position(top, timeout=60)
        lines = []
        for w, view in views.items():
            samples = sorted(view.visible_wall[p] - t for p, t in sent_wall.items() if p in view.visible_wall)
            into[w] += samples
            lines.append(f"{label(w)} {Latency(samples, len(sent_wall) - len(samples)).line()}")
        print(f"  [pair {r + 1}] emit -> visible, load {os.getloadavg()[0]:.2f}:\n    " + "\n    ".join(lines) +
              f"\n    woken: {subs[WAKE].woken} events on notices in {subs[WAKE].wake_reads} log reads", flush=True)
        return steady.failed
    finally:
        for sub in subs.values():
            sub.stop()


def _paired_summary(paired: dict[int, list[float]]) -> None:
    base, woken = sorted(paired.get(BASELINE_WAIT, [])), sorted(paired.get(WAKE, []))
    if not base or not woken:
        return
    b, w = Latency(base, 0), Latency(woken, 0)
    print(f"\nPaired rounds merged (the same events in both): Kafka-only {BASELINE_WAIT} ms p50 {b.pct(50):.1f} / p99 "
          f"{b.pct(99):.1f} ms; woken p50 {w.pct(50):.1f} / p99 {w.pct(99):.1f} ms = {w.pct(50) / b.pct(50):.2f}x / "
          f"{w.pct(99) / b.pct(99):.2f}x", flush=True)


def _summary(merged: dict[int, dict[str, list[float]]], idles: dict[int, list[float]],
             tansu: dict[int, list[float]], rate: int, costs: dict[int, dict[str, list[float]]] | None = None) -> None:
    print(f"\nSummary (rounds merged; aim at {rate}/s: emit -> visible p50 <= 15 ms)")
    print("  fetch wait | visible p50 / p99 ms | recorded_at->visible p50 / p99 | emit->recorded | "
          "recorded->produced | produced->fetched | fetched->visible | tansu idle % | tansu µs/event | "
          f"vs {BASELINE_WAIT} ms p50 / p99 (after recorded_at p50 / p99)")
    print("             (woken: ... | emit->recorded | recorded->noticed | noticed->visible | ...)")
    base = merged.get(BASELINE_WAIT)
    for w, parts in merged.items():
        total = Latency(sorted(parts["total"]), 0)
        if not total.samples:
            print(f"  {label(w):>10} | nothing visible")
            continue
        ratio = ""
        if base is not None and base["total"] and w != BASELINE_WAIT:
            b = Latency(sorted(base["total"]), 0)
            ratio = f"{total.pct(50) / b.pct(50):.2f}x / {total.pct(99) / b.pct(99):.2f}x"
            mine, theirs = sorted(parts.get(AFTER, [])), sorted(base.get(AFTER, []))
            if mine and theirs:
                a, t = Latency(mine, 0), Latency(theirs, 0)
                ratio += f" ({a.pct(50) / t.pct(50):.2f}x / {a.pct(99) / t.pct(99):.2f}x)"
        cols = " | ".join(f"{Latency(sorted(parts[k]), 0).pct(50) if parts[k] else 0:.1f}"
                          for k in parts if k not in ("total", AFTER))
        after = Latency(sorted(parts.get(AFTER, [])), 0)
        cols = (f"{after.pct(50):8.1f} / {after.pct(99):6.1f} | " if after.samples else "       - /      - | ") + cols
        if w == WAKE:
            cols += " |  "
        idle = sum(idles[w]) / max(len(idles[w]), 1)
        per = sum(tansu[w]) / max(len(tansu[w]), 1)
        print(f"  {label(w):>10} | {total.pct(50):8.1f} / {total.pct(99):6.1f} | {cols} | {idle:12.1f} | "
              f"{per:14.0f} | {ratio}", flush=True)
    if costs:
        print("\n  cost (means of the rounds; subscriber = its Python thread, librdkafka's threads not counted; "
              "pg = the whole server, the projector's work included)")
        print("       mode | " + " | ".join(COSTS))
        for w, c in costs.items():
            print(f"  {label(w):>10} | " + " | ".join(f"{sum(v) / max(len(v), 1):{len(k)}.1f}" for k, v in c.items()))
