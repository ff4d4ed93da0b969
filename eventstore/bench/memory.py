"""Memory benchmark (issue 8, item 6): RSS of the projector, the publisher, a subscriber and an agent
over a 1,000,000-event run, to show whether memory stays flat.

Run with ``eventstore bench memory [--events N]``. It starts fresh ephemeral embedded servers, runs the
projector (with its built-in publisher) as an ``eventstore project`` process and a subscriber (a
``Subscriber`` with an in-memory ``LocalView`` over a fixed set of SKUs) as another process, and emits
from this process through ``AgentClient.emit`` (handles dropped, outcomes resolved by the listener).
Every second it samples the resident set size (``VmRSS`` from /proc) of each process.

The baseline is each process's RSS once the first 10% of the events are through (warm: imports done,
caches and buffers at working size), measured in the same run; the ratio ``end / warm`` is ~1.0 for a
flat process and grows with the event count for a leak. PostgreSQL and the broker are not ours and
are not measured.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from eventstore.bench import agents as bench_agents
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedServers
from eventstore.examples.inventory import InventoryAdjusted, stream_for
from eventstore.postgres.migrate import upgrade
from eventstore.sdk.client import AgentClient
from eventstore.simulate.processes import projector_env

SKUS = 1000


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (0 once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Series:
    name: str
    pid: int
    points: list[tuple[float, int, float]] = field(default_factory=list)  # (seconds, events in log, MiB)

    def warm(self, total: int) -> float:
        """RSS when 10% of the events were in the log (the in-run baseline)."""
        for _, done, mb in self.points:
            if done >= total // 10:
                return mb
        return self.points[-1][2] if self.points else 0.0

    @property
    def peak(self) -> float:
        return max((mb for _, _, mb in self.points), default=0.0)

    @property
    def end(self) -> float:
        return self.points[-1][2] if self.points else 0.0


def subscriber_main() -> int:
    """The subscriber process: follow the committed topic into a LocalView; print the position."""
    from consumers.subscriber import Subscriber
    from consumers.views import LocalView
    from eventstore.examples.inventory import quantity_reducer

    settings = Settings.from_env()
    sub = Subscriber(f"bench-memory-{uuid.uuid4().hex[:6]}", view=LocalView(quantity_reducer),
                     settings=settings).start()
    try:
        while not sub.finished.is_set():
            print(sub.last, flush=True)
            time.sleep(0.5)
    finally:
        sub.stop()
    sub.raise_if_failed()
    return 0


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(events: int = 1_000_000) -> int:
    """Run the benchmark. SIGTERM, like Ctrl-C, unwinds through the context managers, so both
    processes and both servers are always stopped."""
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"memory benchmark: {events:,} events through projector + publisher + subscriber; conditions:")
    print(f"  {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs (shared), "
          "embedded PostgreSQL and tansu started for this run")
    with EmbeddedServers(None) as s:
        upgrade(s.postgres.url)
        settings = Settings.from_env().with_servers(s.postgres.url, s.broker.bootstrap).replace(
            namespace=f"mem-{uuid.uuid4().hex[:6]}", intake_partitions=4)
        print(f"  batch size {settings.batch_size}, {settings.intake_partitions} intake partitions, "
              f"{SKUS} SKUs, sampling VmRSS every second")
        return _run(settings, events)


def _run(settings: Settings, events: int) -> int:
    env = projector_env(settings)
    projector = subprocess.Popen([sys.executable, "-m", "eventstore.cli", "project"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    subscriber = subprocess.Popen([sys.executable, "-m", "eventstore.bench.memory", "--subscriber"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    position = [0]

    def read_position() -> None:
        if subscriber.stdout is not None:
            for line in subscriber.stdout:
                if line.strip().isdigit():
                    position[0] = int(line)

    threading.Thread(target=read_position, daemon=True).start()
    series = [Series("projector+publisher", projector.pid), Series("subscriber", subscriber.pid),
              Series("agent (this process)", os.getpid())]
    emitted, in_log = [0], [0]
    t0 = time.monotonic()
    try:
        with bench_agents.client("bench-memory-agent", settings) as client, \
                psycopg.connect(settings.require_database(), autocommit=True) as conn:
            emitter = threading.Thread(target=_emit, args=(client, events, emitted, in_log), daemon=True)
            emitter.start()
            print(f"\n{'time':>6} {'emitted':>10} {'in log':>10} {'subscriber':>10}   "
                  + "   ".join(f"{s.name} MiB" for s in series))
            last_print = 0.0
            while True:
                row = conn.execute("SELECT position FROM log_head").fetchone()
                done = int(row[0]) if row else 0
                in_log[0] = done
                now = time.monotonic() - t0
                for s in series:
                    s.points.append((now, done, rss_mb(s.pid)))
                if now - last_print >= 10 or (done >= events and position[0] >= events):
                    last_print = now
                    print(f"{now:5.0f}s {emitted[0]:>10,} {done:>10,} {position[0]:>10,}   "
                          + "   ".join(f"{s.points[-1][2]:>{len(s.name) + 4}.0f}" for s in series), flush=True)
                if done >= events and position[0] >= events:
                    break
                if projector.poll() is not None or subscriber.poll() is not None:
                    print("a process ended early:", projector.returncode, subscriber.returncode)
                    return 1
                time.sleep(1.0)
            emitter.join(30)
    finally:
        for p in (subscriber, projector):
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
    seconds = time.monotonic() - t0
    print(f"\n{events:,} events in {seconds:.0f}s ({events / seconds:,.0f}/s end to end)")
    print(f"{'process':<24} {'warm (10%)':>11} {'peak':>8} {'end':>8} {'end/warm':>9}")
    for s in series:
        warm = s.warm(events)
        print(f"{s.name:<24} {warm:>9.0f}MB {s.peak:>6.0f}MB {s.end:>6.0f}MB {s.end / warm if warm else 0:>9.2f}")
    return 0


AHEAD = 50_000  # the agent stays at most this far ahead of the log: a steady run, not a backlog


def _emit(client: AgentClient, events: int, emitted: list[int], done: list[int]) -> None:
    for i in range(events):
        while i - done[0] > AHEAD:
            time.sleep(0.05)
        sku = f"m{i % SKUS}"
        client.emit(InventoryAdjusted(sku=sku, delta=1), stream_for(sku))
        emitted[0] = i + 1
    client.flush(120)


if __name__ == "__main__":
    if "--subscriber" in sys.argv:
        sys.exit(subscriber_main())
    sys.exit(main())
