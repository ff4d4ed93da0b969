"""emit -> outcome split per event, step by step (produce, fetch, queue, write, notify, lookup), and how the
latency benchmarks print it: each step's percentiles, the CPU per component, the tail split of the slowest
events (eventstore.bench.tailsplit) and the summary table by fetch wait. Pure: timestamps in, lines out."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from eventstore.bench.tailsplit import STEPS, Stall, Timeline, tail_report
from eventstore.bench.writepath import Latency
from eventstore.core.outcomes import Outcome


@dataclass
class Split:
    """Per event, seconds: each step, the total, the broker's share (emit -> projector has it) and ours."""

    steps: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STEPS})
    total: list[float] = field(default_factory=list)
    broker: list[float] = field(default_factory=list)
    ours: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    failed: int = 0  # no committed outcome: a correctness failure
    unmatched: int = 0  # committed, but a step's timestamp is missing (not in the figures)
    cpu_us: dict[str, float] = field(default_factory=dict)  # CPU µs per event by component
    runs_cpu_us: list[dict[str, float]] = field(default_factory=list)  # of merged runs
    timelines: list[Timeline] = field(default_factory=list)  # per matched event, for the tail split
    stalls: list[Stall] = field(default_factory=list)  # what the probes saw during the run
    waited_us: dict[str, float] = field(default_factory=dict)  # run-queue wait µs per event by component
    heaps: dict[str, tuple[int, int]] = field(default_factory=dict)  # process -> (tracked objects, frozen)

    def merge(self, other: Split) -> None:
        for s in STEPS:
            self.steps[s] += other.steps[s]
        self.total += other.total
        self.broker += other.broker
        self.ours += other.ours
        self.batch_sizes += other.batch_sizes
        self.failed += other.failed
        self.unmatched += other.unmatched
        self.runs_cpu_us.append(other.cpu_us)
        self.timelines += other.timelines
        self.stalls += other.stalls

    def lat(self, samples: list[float]) -> Latency:
        return Latency(sorted(samples), self.failed)


def _last(noted: list[tuple[float, list[str]]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for at, ids in noted:
        for i in ids:
            out[i] = at
    return out


def split_of(sent: dict[str, float], acked: dict[str, float], noted: dict[str, list[Any]],
             woke: list[tuple[float, list[str]]], resolved: dict[str, float], statuses: dict[str, Outcome]) -> Split:
    """Each event's steps from the timestamps of the agent (``sent``, ``acked``, ``woke``, ``resolved``) and
    of the projector (``noted``: hand-overs and writes); an event without a COMMITTED outcome is a failure,
    one missing a timestamp is left out of the figures (counted)."""
    handed = _last([(a, ids) for a, _, ids in noted["handed"]])
    started = _last([(a, ids) for a, _, ids in noted["written"]])
    committed = _last([(b, ids) for _, b, ids in noted["written"]])
    notified: dict[str, float] = {}
    for at, ids in woke:
        for named in ids:
            notified.setdefault(named, at)
    sp = Split(batch_sizes=[len(ids) for _, _, ids in noted["written"]])
    for eid, t_sent in sent.items():
        if statuses.get(eid) is not Outcome.COMMITTED:
            sp.failed += 1
            continue
        points = (t_sent, acked.get(eid), handed.get(eid), started.get(eid), committed.get(eid), notified.get(eid),
                  resolved.get(eid))
        ts = [p for p in points if p is not None]
        if len(ts) < len(points):
            sp.unmatched += 1
            continue
        for step, a, b in zip(STEPS, ts, ts[1:], strict=False):
            sp.steps[step].append(b - a)
        sp.timelines.append((ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], ts[6]))
        sp.total.append(ts[-1] - ts[0])
        sp.broker.append(ts[2] - ts[0])
        sp.ours.append(ts[-1] - ts[2])
    return sp


def print_split(label: str, sp: Split, idle: float | None = None) -> None:
    load = os.getloadavg()[0]
    print(f"  [{label}] emit -> outcome total : {sp.lat(sp.total).line()}   load {load:.2f}")
    print(f"  [{label}]   broker share        : {sp.lat(sp.broker).line()}")
    print(f"  [{label}]   our share           : {sp.lat(sp.ours).line()}")
    for s in STEPS:
        print(f"  [{label}]     {s:<8}          : {sp.lat(sp.steps[s]).line()}")
    sizes = sorted(sp.batch_sizes) or [0]
    cpu = ", ".join(f"{k} {v:.0f}" for k, v in sp.cpu_us.items() if not k.startswith("machine"))
    idle_text = "" if idle is None else f"; tansu idle {idle:.1f}% of a core"
    unmatched = f", {sp.unmatched} without every timestamp" if sp.unmatched else ""
    print(f"  [{label}]   batches {len(sp.batch_sizes)}{unmatched}, median size {sizes[len(sizes) // 2]}; "
          f"CPU µs/event: {cpu}{idle_text}", flush=True)
    print_tail(label, sp)


def print_tail(label: str, sp: Split) -> None:
    """The split of the slowest 1 % and 2 % (eventstore.bench.tailsplit) and the run-queue waits."""
    for pct in (99.0, 98.0):
        report = tail_report(sp.timelines, sp.stalls, pct)
        if report is None:
            return
        for line in report.lines():
            print(f"  [{label}]   {line}")
    if sp.waited_us:
        waited = ", ".join(f"{k} {v:.0f}" for k, v in sp.waited_us.items())
        print(f"  [{label}]   waited for a CPU (run queue), µs/event: {waited}", flush=True)
    if sp.heaps:
        heaps = ", ".join(f"{k} {n:,} ({f:,} frozen)" for k, (n, f) in sp.heaps.items())
        print(f"  [{label}]   objects the collector tracks after the run: {heaps}", flush=True)


def summary(merged: dict[int, Split], idles: dict[int, list[float]], rate: int, baseline: int) -> None:
    """The table of the per-wait runs, merged, each against the ``baseline`` wait's."""
    base = merged.get(baseline)
    print(f"\nSummary after the throughput run (rounds merged; aim at {rate}/s: p50 <= 10 ms, p99 <= 30 ms)")
    print("  fetch wait | total p50 / p99 ms | broker p50 | ours p50 | fetch p50 | queue p50 | write p50 | "
          f"notify p50 | lookup p50 | tansu idle % | tansu µs/event | vs {baseline} ms p50 / p99")
    for w, sp in merged.items():
        if not sp.total:
            print(f"  {w:>7} ms | no outcome arrived")
            continue
        t = sp.lat(sp.total)
        ratio = ""
        if base is not None and base.total:
            b = base.lat(base.total)
            ratio = f"{t.pct(50) / b.pct(50):.2f}x / {t.pct(99) / b.pct(99):.2f}x"
        idle = sum(idles[w]) / max(len(idles[w]), 1)
        tansu = sum(c.get("tansu", 0.0) for c in sp.runs_cpu_us) / max(len(sp.runs_cpu_us), 1)
        steps = " | ".join(f"{sp.lat(sp.steps[s]).pct(50):9.1f}" for s in STEPS[1:])
        print(f"  {w:>7} ms | {t.pct(50):8.1f} / {t.pct(99):6.1f} | {sp.lat(sp.broker).pct(50):10.1f} | "
              f"{sp.lat(sp.ours).pct(50):8.1f} | {steps} | {idle:12.1f} | {tansu:14.0f} | {ratio}",
              flush=True)
