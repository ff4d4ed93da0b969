"""Where emit -> outcome latency goes, step by step, and what the projector's fetch wait buys, in one run.

``eventstore bench latency`` starts fresh embedded servers and a projector *process* (as deployed) that
notes when its consumer hands over each message and when that message's batch committed
(``eventstore.bench.timedprojector``). The agent, in this process, notes when it emitted, when the broker
acknowledged the produce, when its listener woke on the notification and when the handle resolved. Every
timestamp is ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process of the machine), so the
steps of one event compare exactly:

    emit -> acknowledged -> projector has it -> its write starts -> committed -> listener woke -> resolved
       produce          fetch              queue              write       notify          lookup

Phases: (1) a fresh broker; (2) ``heavy`` events pre-filled into the intake topic and drained by the
projector (the throughput run), then at once the steady-rate run; (2b) on the same projector, the listener
taking sealed notifications as the decisions against a table lookup per wake-up (the previous listener),
A B B A, with their ratio; (3) on that same broker, each of the
projector's ``fetch.wait.max.ms`` settings in turn, ``rounds`` times alternately (A, B, C, A, B, C ...),
each with the broker's CPU while the projector is idle and per event while it works. The summary merges
the rounds per setting and gives each setting's ratio against 10 ms (the previous default) of the same
run. Then further ``sections`` on the same broker (the CLI adds ``eventstore.bench.commitab``: the projector's
Kafka commit interval, A B A B), and the broker alone (``eventstore.bench.brokerprobes``): produce -> consume by
fetch wait, a partition's stored history, and the broker's idle CPU by fetch wait.

Every run also prints the split of its tail (``eventstore.bench.tailsplit``): the slowest 1 % and 2 % by step,
the stalls they overlapped (collector pauses, slow statements, autovacuum, checkpoints, slow writes), and each
component's run-queue wait.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import KafkaError, Message

from eventstore.bench import agents as bench_agents
from eventstore.bench.brokerprobes import fetch_wait_cost, history_probe, probes
from eventstore.bench.drain import prefill_and_wait
from eventstore.bench.latencysplit import Split, print_split, split_of, summary
from eventstore.bench.launch import child, child_env, head, postmaster_pid
from eventstore.bench.tailsplit import (
    GcPauses,
    PgLogReader,
    RunDelayMeter,
    TailProbes,
    configure_pg_log,
)
from eventstore.bench.writepath import CpuMeter, make_events, publish_from_head
from eventstore.core.outcomes import Outcome
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedServers
from eventstore.postgres.connection import Connection
from eventstore.postgres.migrate import upgrade
from eventstore.sdk.client import AgentClient
from eventstore.sdk.listener import named_ids
from eventstore.sdk.pending import EmitHandle

BASELINE_WAIT = 10  # ms: the projector's fetch.wait.max.ms before it became a setting
IDLE_SECONDS = 3.0


class TimedClient(AgentClient):
    """An AgentClient that also notes when the broker acknowledged each produce (the benchmark turns on
    delivery reports for successes; the SDK normally asks only for failures)."""

    def __init__(self, agent_id: str, settings: Settings, **options: Any) -> None:
        self.acked: list[tuple[float, bytes | None]] = []
        self.settled: list[tuple[float, list[str]]] = []  # (when a wake-up had settled them, [event ids])
        super().__init__(agent_id, settings, **options)

    def _undelivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.acked.append((time.monotonic(), msg.value()))
            return
        super()._undelivered(err, msg)


def timed_client(agent_id: str, settings: Settings) -> tuple[TimedClient, list[tuple[float, list[str]]]]:
    """A registered agent's TimedClient, and the list its listener notes (when, [event ids]) in at each wake-up."""
    agent_settings = settings.replace(kafka_config={**settings.kafka_config, "delivery.report.only.error": False})
    client = TimedClient(agent_id, agent_settings, credential=str(bench_agents.credential(settings, agent_id)))
    woke: list[tuple[float, list[str]]] = []
    listener = client._listener
    wake = listener._wake

    def timed_wake(conn: Connection, payloads: list[str]) -> None:
        ids = [i for p in payloads for i in named_ids(p)]
        woke.append((time.monotonic(), ids))
        wake(conn, payloads)  # settles what it names: sealed rows at once, the rest by its lookup
        client.settled.append((time.monotonic(), ids))

    setattr(listener, "_wake", timed_wake)  # noqa: B010 (the benchmark's probe only)
    return client, woke


@dataclass
class TimedProjectorProcess:
    """A running ``eventstore.bench.timedprojector`` process."""

    proc: subprocess.Popen[bytes]
    out: Path
    fetch_wait_ms: int

    def take(self, timeout: float = 30.0) -> dict[str, list[Any]]:
        """What the projector noted since the last call."""
        self.out.unlink(missing_ok=True)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while not self.out.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the timed projector did not answer (exit code {self.proc.poll()})")
            time.sleep(0.02)
        data: dict[str, list[Any]] = json.loads(self.out.read_text())
        return data


@contextmanager
def timed_projector(settings: Settings, fetch_wait_ms: int, logdir: Path,
                    extra_env: dict[str, str] | None = None) -> Iterator[TimedProjectorProcess]:
    """A timed projector process for ``settings`` with this fetch wait (its log in ``logdir``; ``extra_env``
    for its process); always stopped."""
    env = child_env(settings, EVENTSTORE_PROJECTOR_FETCH_WAIT_MS=str(fetch_wait_ms), **(extra_env or {}))
    out = logdir / f"noted-{uuid.uuid4().hex[:6]}.json"
    with child([sys.executable, "-m", "eventstore.bench.timedprojector", str(out)], env,
               logdir / f"projector-{fetch_wait_ms}ms.log", append=True) as proc:
        yield TimedProjectorProcess(proc, out, fetch_wait_ms)


def split_run(client: TimedClient, woke: list[tuple[float, list[str]]], proj: TimedProjectorProcess,
              cpu: CpuMeter, n: int, rate: int, prefix: str, probes: TailProbes | None = None) -> Split:
    """Emit n events at a steady rate and split each one's emit -> outcome time into its steps (and, with
    ``probes``, note what stalled meanwhile for the tail split).

    The agent keeps what an agent keeps: its handles, no Future or callback per event (a Future with its
    Condition is a dozen objects the collector tracks; held for a whole run they made this process's oldest
    generation grow and its full collections pause every thread 57-193 ms, docs/perf-latency.md Round 4).
    An event counts as resolved when the listener's wake-up that first named it returned (it settles sealed
    rows and looks up the rest inside it); events are handed to ``emit`` and dropped as they go."""
    proj.take()
    client.acked.clear()
    client.settled.clear()
    woke.clear()
    if probes is not None:
        probes.start()
    sent: dict[str, float] = {}
    statuses: dict[str, Outcome] = {}
    events = make_events(n, prefix, seed=rate)
    events.reverse()
    handles = []
    cpu.start()
    t0 = time.monotonic()
    for i in range(n):
        e, s = events.pop()
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        now = time.monotonic()
        h = client.emit(e, s)
        sent[h._key] = now
        handles.append(h)
        del e
        if i % 64 == 63:  # an agent drops a handle once it has its outcome: so does this one
            handles = _collect(handles, statuses, 0.0)
    _collect(handles, statuses, 30.0)
    cpu.stop()
    time.sleep(0.5)  # the projector notes a write after its commit: under load, after the outcome arrived
    noted = proj.take()
    stalls, waited = probes.stop(noted) if probes is not None else ([], {})
    acked: dict[str, float] = {}
    for at, value in client.acked:
        try:
            acked[str(json.loads(value or b"{}")["event_id"])] = at
        except (ValueError, KeyError, TypeError):
            continue
    resolved: dict[str, float] = {}
    for at, ids in client.settled:
        for eid in ids:
            resolved.setdefault(eid, at)
    sp = split_of(sent, acked, noted, woke, resolved, statuses)
    sp.cpu_us = {k: v / n * 1e6 for k, v in cpu.used.items()}
    sp.stalls = stalls
    sp.waited_us = {k: v / n * 1e6 for k, v in waited.items()}
    if probes is not None:
        sp.heaps = probes.heaps(noted)
    return sp


def _collect(handles: list[EmitHandle], statuses: dict[str, Outcome], timeout: float) -> list[EmitHandle]:
    """Note the status of each handle settled (waiting up to ``timeout`` for each); the handles still pending."""
    left = []
    for h in handles:
        if timeout == 0.0 and not h.done():
            left.append(h)
            continue
        try:
            statuses[h._key] = h.result(timeout).status
        except Exception:  # counted as failed by split_of
            continue
    return left


def sealed_ab(client: TimedClient, woke: list[tuple[float, list[str]]], proj: TimedProjectorProcess,
              cpu: CpuMeter, events: int, rate: int, probes: TailProbes | None = None) -> Split:
    """Right after the throughput run, on the same projector and broker: the listener taking sealed
    notifications as the decisions (as shipped) against a lookup per wake-up (the previous listener: the
    seal ignored), in the order A B B A A B so a drift over the minutes weighs on both; the merged runs,
    for the correctness count."""
    print("\n2b) right after the drain, same projector: sealed notifications taken as the decisions (A) vs "
          "a table lookup per wake-up (B, the previous listener), A B B A A B", flush=True)
    listener = client._listener
    seal = listener.seal
    if seal is None:
        print("  the client has no credential: nothing is sealed; skipped", flush=True)
        return Split()
    runs: dict[str, Split] = {"sealed": Split(), "lookup": Split()}
    p50s: dict[str, list[float]] = {"sealed": [], "lookup": []}
    for i, variant in enumerate(("sealed", "lookup", "lookup", "sealed", "sealed", "lookup")):
        listener.seal = seal if variant == "sealed" else None
        before = listener.sealed_settled
        sp = split_run(client, woke, proj, cpu, events, rate, f"s{i}", probes)
        print_split(f"{variant} {i + 1}", sp)
        print(f"  [{variant} {i + 1}]   settled from the notification without a query: "
              f"{listener.sealed_settled - before} of {events}", flush=True)
        runs[variant].merge(sp)
        if sp.total:
            p50s[variant].append(sp.lat(sp.total).pct(50))
    listener.seal = seal
    a, b = runs["sealed"], runs["lookup"]
    if a.total and b.total:
        ta, tb = a.lat(a.total), b.lat(b.total)
        la, lb = a.lat(a.steps["lookup"]), b.lat(b.steps["lookup"])
        agent_a = sum(c.get("agent", 0.0) for c in a.runs_cpu_us) / len(a.runs_cpu_us)
        agent_b = sum(c.get("agent", 0.0) for c in b.runs_cpu_us) / len(b.runs_cpu_us)
        pg_a = sum(c.get("postgres", 0.0) for c in a.runs_cpu_us) / len(a.runs_cpu_us)
        pg_b = sum(c.get("postgres", 0.0) for c in b.runs_cpu_us) / len(b.runs_cpu_us)
        print(f"  sealed vs lookup (merged): total p50 {ta.pct(50):.1f} vs {tb.pct(50):.1f} ms = "
              f"{ta.pct(50) / tb.pct(50):.2f}x, p99 {ta.pct(99):.1f} vs {tb.pct(99):.1f} ms = "
              f"{ta.pct(99) / tb.pct(99):.2f}x; woke -> resolved p50 {la.pct(50):.2f} vs {lb.pct(50):.2f} ms; "
              f"CPU µs/event agent {agent_a:.0f} vs {agent_b:.0f}, PostgreSQL {pg_a:.0f} vs {pg_b:.0f}; "
              f"load {os.getloadavg()[0]:.2f}", flush=True)
        pairs = [x / y for x, y in zip(p50s["sealed"], p50s["lookup"], strict=False)]
        print(f"  per run total p50 ms, sealed {', '.join(f'{x:.1f}' for x in p50s['sealed'])}; lookup "
              f"{', '.join(f'{x:.1f}' for x in p50s['lookup'])}; pair ratios "
              f"{', '.join(f'{r:.2f}x' for r in pairs)} (each sealed run against the lookup run in its order)",
              flush=True)
    merged = Split()
    merged.merge(a)
    merged.merge(b)
    return merged


def idle_cpu(cpu: CpuMeter, seconds: float = IDLE_SECONDS) -> float:
    """The broker's CPU (percent of one core) while the projector waits on an idle intake topic."""
    cpu.start()
    time.sleep(seconds)
    cpu.stop()
    return cpu.used.get("tansu", 0.0) / seconds * 100


def settle(client: AgentClient, prefix: str) -> None:
    """Until the projector answers: it joined its group and its connections are warm."""
    deadline = time.monotonic() + 90
    for i in range(1_000_000):
        event, stream = make_events(1, f"{prefix}-warm{i}", 1)[0]
        try:
            if client.emit_and_wait(event, stream, timeout=10).status is Outcome.COMMITTED:
                break
        except Exception:
            if time.monotonic() > deadline:
                raise
    for event, stream in make_events(20, f"{prefix}-warm", 2):  # warm the listener's prepared lookup
        client.emit_and_wait(event, stream, timeout=10)


# A further section on the same broker after section 3 (eventstore.bench.commitab): (servers, settings, an
# autocommit connection, the postmaster's pid, the log folder, the agent's collector probe, the server's log,
# events, rate) -> its merged runs, for the correctness count.
Section = Callable[[EmbeddedServers, Settings, Any, int, Path, GcPauses, PgLogReader, int, int], "Split"]


def main(heavy: int = 100_000, rate: int = 1000, events: int = 2000, waits: tuple[int, ...] = (10, 1, 2, 5),
         rounds: int = 2, probe: bool = True, sections: Sequence[Section] = ()) -> int:
    """Fresh broker, the throughput run, then each fetch wait ``rounds`` times alternately; a summary; then
    ``sections`` on the same broker."""
    default = Settings().projector_fetch_wait_ms
    print(f"emit -> outcome latency benchmark: {events} events at {rate}/s per run; throughput run {heavy:,} "
          f"events; projector fetch.wait.max.ms {', '.join(map(str, waits))} x {rounds} rounds alternately "
          f"(default {default}, baseline {BASELINE_WAIT}); load average {os.getloadavg()[0]:.2f} "
          f"({os.cpu_count()} CPUs, shared machine); one monotonic clock across processes", flush=True)
    logdir = Path(tempfile.mkdtemp(prefix="eventstore-latency-"))
    merged: dict[int, Split] = {w: Split() for w in waits}
    others = Split()  # the fresh and right-after runs, for the correctness count
    idles: dict[int, list[float]] = {w: [] for w in waits}
    with EmbeddedServers(None) as servers:
        upgrade(servers.postgres.url)
        bootstrap = servers.broker.bootstrap
        settings = Settings.from_env().with_servers(servers.postgres.url, bootstrap).replace(
            namespace="lat", projector_group="lat")
        with psycopg.connect(servers.postgres.url, autocommit=True) as conn:
            postmaster = postmaster_pid(conn)
            pg_log = PgLogReader(configure_pg_log(conn))
            agent_gc = GcPauses().install()
            client, woke = timed_client("lat-agent", settings)
            try:
                print(f"\n1) fresh broker (projector fetch.wait.max.ms={default})", flush=True)
                with timed_projector(settings, default, logdir) as proj:
                    cpu = _meter(servers, postmaster, proj)
                    tails = TailProbes(agent_gc, pg_log, RunDelayMeter(cpu.pids.copy()))
                    settle(client, "fresh")
                    idle = idle_cpu(cpu)
                    sp = split_run(client, woke, proj, cpu, events, rate, "f", tails)
                    print_split(f"fresh, {default} ms", sp, idle)
                    others.merge(sp)
                    print(f"\n2) throughput run: {heavy:,} events pre-filled into the same intake topic and drained",
                          flush=True)
                    drained = prefill_and_wait(settings, heavy, conn, proj.proc)
                    row = conn.execute("SELECT coalesce(max(position), 0) FROM publisher_checkpoints").fetchone()
                    behind = head(conn) - int(row[0] if row else 0)
                    print(f"  drained in {drained:.1f} s ({heavy / drained:,.0f} "
                          f"events/s); the steady run starts at once, the publisher's checkpoint {behind:,} events "
                          "behind the log head", flush=True)
                    sp = split_run(client, woke, proj, cpu, events, rate, "r", tails)
                    print_split(f"right after, {default} ms", sp)
                    others.merge(sp)
                    others.merge(sealed_ab(client, woke, proj, cpu, events, rate, tails))
            finally:
                client.close()
            # Each setting on topics of its own (same broker): the intake topic's history slows tansu's
            # fetches (section 4), so settings measured one after another on one topic would not compare.
            print(f"\n3) the same broker after the throughput run: fetch.wait.max.ms {waits} x {rounds}, "
                  "alternately, each run on fresh topics", flush=True)
            for r in range(rounds):
                for w in waits:
                    ns = settings.replace(namespace=f"lat-{r}-{w}", projector_group=f"lat-{r}-{w}")
                    client, woke = timed_client(f"lat-agent-{r}-{w}", ns)
                    publish_from_head(conn, ns)  # its publisher does not republish the earlier runs' events
                    try:
                        with timed_projector(ns, w, logdir) as proj:
                            cpu = _meter(servers, postmaster, proj)
                            tails = TailProbes(agent_gc, pg_log, RunDelayMeter(cpu.pids.copy()))
                            settle(client, f"r{r}w{w}")
                            idle = idle_cpu(cpu)
                            sp = split_run(client, woke, proj, cpu, events, rate, f"h{r}w{w}", tails)
                    finally:
                        client.close()
                    print_split(f"round {r + 1}, {w} ms", sp, idle)
                    merged[w].merge(sp)
                    idles[w].append(idle)
            for section in sections:
                others.merge(section(servers, settings, conn, postmaster, logdir, agent_gc, pg_log, events, rate))
        summary(merged, idles, rate, BASELINE_WAIT)
        if probe:
            print("\n4) the broker alone: produce -> consume on fresh topics (one partition, assign())")
            probes(bootstrap, "broker only")
            print("\n5) the broker alone, one partition's history (stored batches, not messages, cost)")
            history_probe(bootstrap)
            print("\n6) the broker's CPU by the projector consumer's fetch wait, idle and at the rate (alternately)")
            fetch_wait_cost(bootstrap, waits, rate=rate)
    failed = others.failed + sum(sp.failed for sp in merged.values())
    print(f"\ncorrectness: {'PASS' if failed == 0 else 'FAIL'} ({failed} emitted events without a COMMITTED "
          f"outcome); load average after the run {os.getloadavg()[0]:.2f}; logs in {logdir}")
    return 0 if failed == 0 else 1


def _meter(servers: EmbeddedServers, postmaster: int, proj: TimedProjectorProcess) -> CpuMeter:
    pids = {"agent": os.getpid(), "projector": proj.proc.pid, "postgres": postmaster}
    if servers.broker.pid is not None:
        pids["tansu"] = servers.broker.pid
    return CpuMeter(pids)
