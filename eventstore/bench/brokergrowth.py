"""Does emit -> outcome stay flat over a long steady run? The embedded broker (tansu 0.6.0, memory store)
fetches more slowly as a partition stores more produce batches, and the SDK sends each lone emit as its
own request (one stored batch), so a steady rate ages the intake topic as it runs.

``eventstore bench broker-growth`` runs a steady ``rate`` for ``seconds`` per variant, each variant on
fresh topics of the same broker, the variants alternated for ``rounds`` rounds (A, B, C, A, B, C ...),
and prints per window of ``window`` seconds the p50 / p99 of emit -> outcome and tansu's CPU µs per
event, so the growth shows inside one run. The baseline is the SDK as shipped ("at once": a lone emit
is sent at once); the others coalesce lone emits through librdkafka's ``linger.ms`` (fewer stored
batches, a wait per emit) or spread the topic over more partitions (fewer batches per partition).
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from eventstore.bench import agents as bench_agents
from eventstore.bench.brokerlatency import settle, timed_projector
from eventstore.bench.launch import proc_cpu
from eventstore.bench.writepath import Latency, make_events
from eventstore.core.outcomes import EmitResult, Outcome
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedServers
from eventstore.postgres.migrate import upgrade
from eventstore.sdk.client import AgentClient


@dataclass(frozen=True)
class Variant:
    """One way to send a steady stream of lone emits."""

    name: str
    linger_ms: int = 5
    at_once: bool = True  # the SDK's send-at-once rule for lone emits
    partitions: int = 8
    in_flight: int = 5  # max.in.flight.requests.per.connection (1: Nagle-like, the rest waits for the ack)


VARIANTS = (
    Variant("at once (today)"),
    Variant("linger 5, coalesced", at_once=False),
    Variant("one in flight, linger 0", linger_ms=0, at_once=False, in_flight=1),
)
MORE_VARIANTS = (Variant("linger 20, coalesced", linger_ms=20, at_once=False),
                 Variant("at once, 32 partitions", partitions=32))


@dataclass
class Windows:
    """Per window: emit -> outcome samples (s) and tansu CPU µs per event; failures over the whole run."""

    latencies: list[list[float]] = field(default_factory=list)
    tansu_us: list[float] = field(default_factory=list)
    failed: int = 0

    def merge(self, other: Windows) -> None:
        for i, samples in enumerate(other.latencies):
            if i < len(self.latencies):
                self.latencies[i] += samples
            else:
                self.latencies.append(list(samples))
        self.tansu_us += other.tansu_us
        self.failed += other.failed


def steady(client: AgentClient, tansu_pid: int | None, seconds: float, window: float, rate: int,
           prefix: str) -> Windows:
    """Emit ``rate`` events a second for ``seconds``; each event's emit -> outcome by the window it was
    emitted in, and tansu's CPU per event emitted in each window."""
    n = int(seconds * rate)
    per_window = int(window * rate)
    sent: list[float] = []
    resolved: dict[int, float] = {}
    ok: set[int] = set()
    lock = threading.Lock()

    def done(i: int) -> Callable[[Future[EmitResult]], None]:
        def cb(f: Future[EmitResult]) -> None:
            now = time.monotonic()
            if f.exception() is None and f.result().status is Outcome.COMMITTED:
                with lock:
                    resolved[i] = now
                    ok.add(i)
        return cb

    handles = []
    cpu_marks = [proc_cpu(tansu_pid) if tansu_pid else 0.0]
    t0 = time.monotonic()
    for i, (e, s) in enumerate(make_events(n, prefix, seed=rate)):
        if i and i % per_window == 0:
            cpu_marks.append(proc_cpu(tansu_pid) if tansu_pid else 0.0)
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sent.append(time.monotonic())
        h = client.emit(e, s)
        h.future.add_done_callback(done(i))
        handles.append(h)
    cpu_marks.append(proc_cpu(tansu_pid) if tansu_pid else 0.0)
    for h in handles:
        try:
            h.result(60)
        except Exception:  # counted as failed below
            continue
    out = Windows()
    with lock:
        for w in range(math.ceil(n / per_window)):
            ids = range(w * per_window, min(n, (w + 1) * per_window))
            out.latencies.append([resolved[i] - sent[i] for i in ids if i in resolved])
        out.failed = n - len(ok)
    out.tansu_us = [(b - a) / per_window * 1e6 for a, b in itertools.pairwise(cpu_marks)]
    return out


def run_variant(settings: Settings, v: Variant, tag: str, tansu_pid: int | None, logdir: Path, seconds: float,
                window: float, rate: int) -> Windows:
    """One variant on fresh topics (its own namespace) with its own projector process."""
    ns = settings.replace(namespace=f"grow-{tag}", projector_group=f"grow-{tag}", intake_partitions=v.partitions,
                          kafka_config={**settings.kafka_config, "linger.ms": v.linger_ms,
                                        "max.in.flight.requests.per.connection": v.in_flight})
    agent_id = f"grow-agent-{tag}"
    client = AgentClient(agent_id, ns, credential=str(bench_agents.credential(ns, agent_id)))
    try:
        if not v.at_once:
            client.sparse_after = math.inf
        with timed_projector(ns, ns.projector_fetch_wait_ms, logdir):
            settle(client, f"g{tag}")
            return steady(client, tansu_pid, seconds, window, rate, f"g{tag}")
    finally:
        client.close()


def main(seconds: float = 30.0, window: float = 5.0, rate: int = 1000, rounds: int = 2,
         variants: tuple[Variant, ...] = VARIANTS) -> int:
    """Each variant ``rounds`` times alternately on one broker; windows, then a summary with ratios against
    the first variant (the SDK as shipped) of the same run."""
    print(f"broker growth benchmark: {rate} events/s for {seconds:.0f} s per run, windows of {window:.0f} s, "
          f"{len(variants)} variants x {rounds} rounds alternately, each run on fresh topics of one embedded "
          f"broker (tansu, memory store); load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs, "
          "shared machine)", flush=True)
    logdir = Path(tempfile.mkdtemp(prefix="eventstore-growth-"))
    merged = {v.name: Windows() for v in variants}
    with EmbeddedServers(None) as servers:
        upgrade(servers.postgres.url)
        settings = Settings.from_env().with_servers(servers.postgres.url, servers.broker.bootstrap)
        tansu_pid = servers.broker.pid
        for r in range(rounds):
            for k, v in enumerate(variants):
                w = run_variant(settings, v, f"{r}{k}", tansu_pid, logdir, seconds, window, rate)
                merged[v.name].merge(w)
                cells = "  ".join(f"{_p(s, 50):5.1f}/{_p(s, 99):5.1f}/{u:4.0f}"
                                  for s, u in zip(w.latencies, w.tansu_us, strict=False))
                print(f"  round {r + 1}, {v.name:<24}: {cells}  ({w.failed} failed; load "
                      f"{os.getloadavg()[0]:.2f})", flush=True)
    print(f"  (each cell: one {window:.0f} s window, emit -> outcome p50 / p99 ms / tansu CPU µs per event)")
    base = merged[variants[0].name]
    print(f"\nSummary at {rate}/s (rounds merged; aim 3 at 1,000/s: p50 <= 10 ms, p99 <= 30 ms over the whole run)")
    print("  variant                  | all p50 / p99 ms | first window p50 / p99 | last window p50 / p99 | "
          "tansu µs/event first -> last | vs at once p50 / p99")
    for v in variants:
        m = merged[v.name]
        every = sorted(x for s in m.latencies for x in s)
        base_all = sorted(x for s in base.latencies for x in s)
        first, last = sorted(m.latencies[0]) if m.latencies else [], sorted(m.latencies[-1]) if m.latencies else []
        nw = len(m.latencies)
        t_first = _mean(m.tansu_us[0::nw]) if nw else 0.0
        t_last = _mean(m.tansu_us[nw - 1::nw]) if nw else 0.0
        ratio = (f"{_p(every, 50) / _p(base_all, 50):.2f}x / {_p(every, 99) / _p(base_all, 99):.2f}x"
                 if every and base_all else "-")
        print(f"  {v.name:<24} | {_p(every, 50):7.1f} / {_p(every, 99):6.1f} | {_p(first, 50):10.1f} / "
              f"{_p(first, 99):6.1f} | {_p(last, 50):9.1f} / {_p(last, 99):6.1f} | {t_first:12.0f} -> {t_last:5.0f} | "
              f"{ratio}", flush=True)
    failed = sum(m.failed for m in merged.values())
    print(f"\ncorrectness: {'PASS' if failed == 0 else 'FAIL'} ({failed} emitted events without a COMMITTED "
          f"outcome); load average after the run {os.getloadavg()[0]:.2f}; logs in {logdir}")
    return 0 if failed == 0 else 1


def _p(samples: list[float], p: float) -> float:
    return Latency(sorted(samples), 0).pct(p) if samples else float("nan")


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)
