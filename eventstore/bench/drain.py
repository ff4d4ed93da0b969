"""Projector drain: how fast one projector empties a pre-filled intake topic, the agent's cost excluded.

N ``InventoryAdjusted`` envelopes (built and encoded exactly as the SDK does) are produced to a fresh
intake topic first; then a projector process starts and the clock runs from its first committed batch
until the log head is N. CPU seconds per component and peak RSS per process come from /proc, and the
projector process's CPU by thread (its Python threads, largest first, and librdkafka's threads).

``python -m eventstore.bench.drain [--events N] [--rounds R] [--baseline TREE]`` runs drains on one pair
of embedded servers; with ``--baseline`` (a directory holding another checkout's ``eventstore`` package,
e.g. ``git worktree add /tmp/base main``) each round drains once with that tree's projector and once with
this one, alternated, and prints the ratio of the projector process's CPU per event (median of rounds).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Producer

from eventstore.bench.launch import child, child_env, head, server_pids, stat_cpu, wait_for
from eventstore.bench.writepath import CpuMeter, make_events, projector, publish_from_head
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedServers
from eventstore.kafka.config import ensure_topics, producer_config
from eventstore.postgres.agents import register
from eventstore.postgres.connection import connect
from eventstore.postgres.migrate import upgrade
from eventstore.sdk.client import build_envelope
from eventstore.wire.envelope import encode

STALL_TIMEOUT = 60.0


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM) in MiB, from /proc; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass(frozen=True)
class Drain:
    """The drain's figures: events, seconds, CPU seconds per component, peak RSS per process (MiB)."""

    events: int
    seconds: float
    fill_seconds: float
    cpu: dict[str, float]
    rss: dict[str, float]
    ok: bool
    detail: str
    threads: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def us(self, name: str) -> float:
        return self.cpu.get(name, 0.0) / self.events * 1e6


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of each thread of a process, by thread id, with the thread's name
    (librdkafka names its threads ``rdk:...``; Python's threads carry the process's name)."""
    out: dict[int, tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        out[int(task.name)] = (stat[stat.index("(") + 1:stat.rindex(")")], stat_cpu(stat))
    return out


def thread_split(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds between two ``thread_cpu`` samples: each Python thread that ran (largest first, as
    ``python 1``, ``python 2``, ...) and librdkafka's threads together."""
    used = {tid: (name, cpu - before.get(tid, (name, 0.0))[1]) for tid, (name, cpu) in after.items()}
    python = sorted((cpu for name, cpu in used.values() if not name.startswith("rdk:")), reverse=True)
    split = {f"python {i + 1}": cpu for i, cpu in enumerate(python) if cpu > 0}
    split["librdkafka"] = sum(cpu for name, cpu in used.values() if name.startswith("rdk:"))
    return split


def prefill(settings: Settings, n: int) -> float:
    """Produce n SDK-built envelopes to the intake topic; seconds taken (build + encode + produce)."""
    ensure_topics(settings, {settings.intake_topic: settings.intake_partitions})
    # Signed like any agent's envelopes: the projector refuses unsigned ones (authentication is on).
    with connect(settings.require_database(), autocommit=True) as conn, conn.cursor() as cur:
        credential = register(cur, "bench-drain")
    producer = Producer(producer_config(settings, **{"linger.ms": 20, "batch.num.messages": 10_000}))
    t0 = time.perf_counter()
    step = 100_000
    for start in range(0, n, step):
        for event, stream in make_events(min(step, n - start), f"d{start // step}", seed=start):
            env = build_envelope("bench-drain", event, stream, expected_version=None, idempotency_key=None,
                                 correlation_id=None, causation_id=None, lease=None)
            key, value, headers = encode(env, credential)
            while True:
                try:
                    producer.produce(settings.intake_topic, value=value, key=key, headers=headers)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(120)
    if left:
        raise RuntimeError(f"{left} pre-fill messages were not acknowledged by the broker")
    return time.perf_counter() - t0


def prefill_and_wait(settings: Settings, n: int, conn: Any, projector: subprocess.Popen[bytes],
                     timeout: float = 600.0) -> float:
    """:func:`prefill` n events, then wait until a running projector process has appended them all (the
    log's head moved by n); seconds from the start of the pre-fill. RuntimeError if the projector exits or
    the drain takes longer than ``timeout``."""
    start = head(conn)
    t0 = time.monotonic()
    prefill(settings, n)
    while head(conn) < start + n:
        if time.monotonic() - t0 > timeout or projector.poll() is not None:
            raise RuntimeError(f"the throughput run was not drained within {timeout:.0f} s")
        time.sleep(0.02)
    return time.monotonic() - t0


def drain(settings: Settings, n: int, conn: psycopg.Connection[Any], pids: dict[str, int], logdir: Path,
          tree: str | None = None) -> Drain:
    """Pre-fill, then time one projector process draining the topic into the log and read model; ``tree``:
    run the projector from that directory's ``eventstore`` package instead of this one."""
    fill = prefill(settings, n)
    start_pos = publish_from_head(conn, settings)
    runner = projector(settings, "process", logdir / "projector-drain.log") if tree is None else \
        _projector_from(tree, settings, logdir / "projector-drain.log")
    with runner as ppid:
        if ppid is None:
            raise RuntimeError("the drain needs a projector process")
        deadline = time.monotonic() + 120
        while head(conn) == start_pos:
            if time.monotonic() > deadline:
                raise RuntimeError("the projector committed nothing within 120 s")
            time.sleep(0.002)
        cpu = CpuMeter({**pids, "projector process": ppid})
        first = head(conn)
        threads = thread_cpu(ppid)
        cpu.start()
        t0 = time.perf_counter()
        wait_for(lambda: head(conn), start_pos + n, STALL_TIMEOUT, "the drain's log head")
        seconds = time.perf_counter() - t0
        cpu.stop()
        split = thread_split(threads, thread_cpu(ppid))
        rss = {name: peak_rss_mb(pid) for name, pid in {**pids, "projector process": ppid}.items()}
    row = conn.execute("SELECT count(*) FROM events WHERE position > %s", (start_pos,)).fetchone()
    count = int(row[0]) if row else 0
    ok = count == n
    return Drain(start_pos + n - first, seconds, fill, cpu.used, rss, ok,
                 f"events in log {count} (expected {n})", split)


@contextmanager
def _projector_from(tree: str, settings: Settings, log_path: Path) -> Iterator[int]:
    """An ``eventstore project`` process importing the ``eventstore`` package of ``tree`` (the baseline)."""
    with child([sys.executable, "-m", "eventstore.cli", "project"], child_env(settings, PYTHONPATH=tree), log_path,
               cwd=tree) as proc:
        yield proc.pid


def report(d: Drain, ceiling_rate: float | None) -> list[str]:
    """Printable lines: rate, CPU per event by component, peak RSS."""
    lines = [f"projector drain of a pre-filled intake topic: {d.events:,} events in {d.seconds:.2f} s = "
             f"{d.rate:,.0f} events/s (aim >= 40,000/s; pre-fill took {d.fill_seconds:.1f} s, not counted)"]
    if ceiling_rate:
        lines.append(f"  drain / raw unnest ceiling of this run: {d.rate / ceiling_rate:.2f}x (aim >= 0.5x)")
    lines.append("  CPU per event during the drain: " + ", ".join(
        f"{k} {v / d.events * 1e6:.0f} us" for k, v in d.cpu.items()) + f" ({os.cpu_count()} CPUs)")
    if d.threads:
        lines.append("  projector process by thread, CPU per event: " + ", ".join(
            f"{k} {v / d.events * 1e6:.1f} us" for k, v in d.threads.items()) +
            " (python 1: the batch transaction's thread; python 2: the publisher's)")
    lines.append("  peak RSS (VmHWM): " + ", ".join(f"{k} {v:,.0f} MiB" for k, v in d.rss.items()) +
                 " (postgres: the postmaster only)")
    lines.append(f"  correctness: {'PASS' if d.ok else 'FAIL'}: {d.detail}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Drains on one pair of embedded servers, alternated with a baseline tree's projector when given."""
    ap = argparse.ArgumentParser(prog="python -m eventstore.bench.drain")
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", help="directory of another checkout whose projector is the baseline")
    args = ap.parse_args(argv)
    here = str(Path(__file__).resolve().parents[2])
    trees = [("baseline", str(Path(args.baseline).resolve())), ("this tree", here)] if args.baseline \
        else [("this tree", here)]
    logdir = Path(tempfile.mkdtemp(prefix="eventstore-bench-drain-"))
    print(f"eventstore projector drain: {args.events:,} pre-filled events per drain, {args.rounds} round(s) of "
          f"{' / '.join(f'{n} ({t})' for n, t in trees)}, alternated; logs in {logdir}")
    print(f"  machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}; "
          f"load average {os.getloadavg()[0]:.2f} (shared: compare the ratio, not the absolute figures)")
    figures: dict[str, list[float]] = {name: [] for name, _ in trees}
    batch_thread: dict[str, list[float]] = {name: [] for name, _ in trees}
    ok = True
    with EmbeddedServers(None) as servers:
        url = servers.postgres.url
        upgrade(url)
        base = Settings.from_env().with_servers(url, servers.broker.bootstrap)
        with psycopg.connect(url, autocommit=True) as conn:
            pids = server_pids(servers, conn)
            for r in range(args.rounds):
                order = trees if r % 2 == 0 else trees[::-1]
                for name, tree in order:
                    run = uuid.uuid4().hex[:6]
                    load = os.getloadavg()[0]
                    d = drain(base.replace(namespace=f"drain-{run}", projector_group=f"drain-{run}"), args.events,
                              conn, pids, logdir, tree if name == "baseline" else None)
                    ok = ok and d.ok
                    figures[name].append(d.us("projector process"))
                    batch_thread[name].append(d.threads.get("python 1", 0.0) / d.events * 1e6)
                    print(f"\nround {r + 1}, {name}, load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
                    print("\n".join("  " + line for line in report(d, None)), flush=True)
    print("\nprojector process CPU per event, median of the rounds: " + ", ".join(
        f"{n} {statistics.median(v):.1f} us ({', '.join(f'{x:.1f}' for x in v)})" for n, v in figures.items()))
    print("the batch transaction's thread (python 1), median: " + ", ".join(
        f"{n} {statistics.median(v):.1f} us ({', '.join(f'{x:.1f}' for x in v)})" for n, v in batch_thread.items()))
    if args.baseline:
        ratio = statistics.median(figures["this tree"]) / statistics.median(figures["baseline"])
        thread_ratio = statistics.median(batch_thread["this tree"]) / statistics.median(batch_thread["baseline"])
        print(f"  this tree / baseline: projector process {ratio:.2f}x, batch thread {thread_ratio:.2f}x "
              "(aim: projector process <= 25 us per event)")
    print(f"load average after the run {os.getloadavg()[0]:.2f}; correctness {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
