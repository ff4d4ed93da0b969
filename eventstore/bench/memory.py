"""Memory benchmark (issue 11, aim 6): RSS of the projector, the publisher and a subscriber over a
1,000,000-event run, to show whether memory stays flat, and each process's peak RSS.

Run with ``eventstore bench memory [--events N] [--heap-trace]``. It starts fresh ephemeral embedded
servers, runs the projector (with its built-in publisher thread) as an ``eventstore project`` process and a
subscriber (a ``Subscriber`` with an in-memory ``LocalView`` over a fixed set of SKUs) as another process,
and emits from this process through ``AgentClient.emit`` (handles dropped, outcomes resolved by the
listener), at most ``AHEAD`` events ahead of the log: a steady flow, not one growing backlog. Every second
it samples ``VmRSS`` and ``VmHWM`` of each process from /proc.

It prints RSS at start / warm (10%) / 25% / 50% / 75% / end, the least-squares slope after warm-up in KiB
per 100,000 events, peak RSS (VmHWM, the kernel's high-water mark), ``end / warm`` against the stated
thresholds (eventstore/bench/flatness.py) and a verdict per process. The baseline is each process's own
warm RSS, measured in the same run. PostgreSQL and the broker are not ours: their RSS is printed as context.

``--heap-trace`` (slower; not the main figure) traces the Python heap of the projector process and of
the subscriber (eventstore/bench/heaptrace.py) and prints, between warm and end, the growth by component
(projector thread, publisher thread, hand-off), the top allocation sites and the object types that grew.
"""

from __future__ import annotations

import json
import os
import platform
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from pathlib import Path

import psycopg

from eventstore.bench import agents as bench_agents
from eventstore.bench import flatness, heaptrace
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedServers
from eventstore.examples.inventory import InventoryAdjusted, stream_for
from eventstore.kafka.config import ensure_topics
from eventstore.postgres.migrate import upgrade
from eventstore.sdk.client import AgentClient
from eventstore.simulate.processes import projector_env

SKUS = 1000
AHEAD = 50_000  # the agent stays at most this far ahead of the log: a steady run, not a backlog


def vm_kib(pid: int, field: str = "VmRSS") -> int:
    """A /proc/<pid>/status figure in KiB (VmRSS, VmHWM); 0 once the process has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_tree_kib(root: int) -> int:
    """Proportional set size of a process and its children (PostgreSQL's backends share memory: PSS does
    not count the shared buffers once per backend); 0 when unreadable."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid = int(stat.parent.name)
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if pid != root and ppid != root:
                continue
            for line in (stat.parent / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total


def subscriber_main() -> int:
    """The subscriber process: follow the committed topic into a LocalView; print the position."""
    heaptrace.install("subscriber")
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


TRIM_ENV = "EVENTSTORE_BENCH_MALLOC_TRIM"


def projector_main() -> int:
    """``eventstore project`` with the heap tracer (``--heap-trace``) or a malloc_trim thread
    (``--malloc-trim``) installed first."""
    heaptrace.install("projector")
    if os.environ.get(TRIM_ENV):
        heaptrace.trim_every(float(os.environ[TRIM_ENV]))
    sys.argv = ["eventstore", "project"]
    runpy.run_module("eventstore.cli", run_name="__main__")  # the CLI's own entry (it exits the process)
    return 0


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(events: int = 1_000_000, heap_trace: bool = False, malloc_trim: float = 0.0) -> int:
    """Run the benchmark. SIGTERM, like Ctrl-C, unwinds through the context managers, so both
    processes and both servers are always stopped."""
    signal.signal(signal.SIGTERM, _interrupt)
    load = os.getloadavg()
    print(f"memory benchmark: {events:,} events through projector + publisher + subscriber; conditions:")
    print(f"  {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs (shared), "
          f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; embedded PostgreSQL and tansu "
          "started for this run")
    tracing = "ON (tracemalloc in projector and subscriber: slower, RSS includes the tracer)" if heap_trace else "off"
    print(f"  MALLOC_ARENA_MAX={os.environ.get('MALLOC_ARENA_MAX', 'unset (glibc default: 8 per core)')}, "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', 'unset')} (both inherited by every process); "
          f"heap trace {tracing}; projector malloc_trim(0) "
          f"{f'every {malloc_trim:g}s' if malloc_trim else 'off (glibc trims only the top of its main heap)'}")
    with EmbeddedServers(None) as s, tempfile.TemporaryDirectory(prefix="es-heaptrace-") as trace_dir:
        upgrade(s.postgres.url)
        settings = Settings.from_env().with_servers(s.postgres.url, s.broker.bootstrap).replace(
            namespace=f"mem-{uuid.uuid4().hex[:6]}", intake_partitions=4)
        print(f"  EVENTSTORE_KAFKA_CONFIG={json.dumps(settings.kafka_config)} (every process); "
              f"batch size {settings.batch_size}, {settings.intake_partitions} intake partitions, "
              f"{SKUS} SKUs, agent at most {AHEAD:,} events ahead of the log, sampling VmRSS/VmHWM every second")
        context = {"tansu (broker)": s.broker.pid or 0,
                   "PostgreSQL (PSS, all backends)": _postmaster_pid(s.postgres.url)}
        return _run(settings, events, context, Path(trace_dir) if heap_trace else None, malloc_trim)


def _postmaster_pid(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:  # the backend's parent, read while it runs
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        try:
            return int(Path(f"/proc/{row[0] if row else 0}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            return 0


def _start(args: list[str], env: dict[str, str], stdout: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, *args], env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)


def _tail(stream: object, keep: deque[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        keep.append(line.rstrip())


def _run(settings: Settings, events: int, context: dict[str, int], trace: Path | None, trim: float) -> int:
    env = projector_env(settings)
    if settings.kafka_config:  # EVENTSTORE_KAFKA_CONFIG of this run (e.g. a consumer's prefetch bound) for all
        env["EVENTSTORE_KAFKA_CONFIG"] = json.dumps(settings.kafka_config)
    if trace is not None:
        env[heaptrace.ENV] = str(trace)
    if trim:
        env[TRIM_ENV] = str(trim)
    wrapped = trace is not None or trim
    project = ["-m", "eventstore.bench.memory", "--projector"] if wrapped else ["-m", "eventstore.cli", "project"]
    # The publisher creates the committed topic when it starts; a Subscriber started before that fails
    # (unknown partition), so the topic is made first.
    ensure_topics(settings, {settings.committed_topic: 1})
    projector = _start(project, env, subprocess.DEVNULL)
    subscriber = _start(["-m", "eventstore.bench.memory", "--subscriber"], env, subprocess.PIPE)
    errors: dict[str, deque[str]] = {"projector": deque(maxlen=20), "subscriber": deque(maxlen=20)}
    position = [0]

    def read_position() -> None:
        if subscriber.stdout is not None:
            for line in subscriber.stdout:
                if line.strip().isdigit():
                    position[0] = int(line)

    threading.Thread(target=read_position, daemon=True).start()
    for proc, name in ((projector, "projector"), (subscriber, "subscriber")):
        threading.Thread(target=_tail, args=(proc.stderr, errors[name]), daemon=True).start()
    emitted, in_log = [0], [0]
    ours = [(flatness.Samples("projector + publisher", projector.pid), in_log),
            (flatness.Samples("subscriber", subscriber.pid), position),
            (flatness.Samples("agent (this process)", os.getpid()), emitted)]
    others = [flatness.Samples(name, pid) for name, pid in context.items()]
    traced: dict[str, bool] = {}
    ahead = 0  # the largest backlog seen: emitted but not yet in the log (what the projector's consumer may prefetch)
    t0 = time.monotonic()
    try:
        with bench_agents.client("bench-memory-agent", settings) as client, \
                psycopg.connect(settings.require_database(), autocommit=True) as conn:
            emitter = threading.Thread(target=_emit, args=(client, events, emitted, in_log), daemon=True)
            emitter.start()
            print(f"\n{'time':>6} {'emitted':>10} {'in log':>10} {'subscriber':>10}  "
                  + "  ".join(f"{s.name} MiB" for s, _ in ours) + "  | " + "  ".join(f"{s.name} MiB" for s in others))
            last_print = -10.0
            while True:
                row = conn.execute("SELECT position FROM log_head").fetchone()
                in_log[0] = int(row[0]) if row else 0
                for s, progress in ours:
                    s.add(progress[0], vm_kib(s.pid), vm_kib(s.pid, "VmHWM"))
                for s in others:
                    kib = pss_tree_kib(s.pid) if s.name.startswith("PostgreSQL") else vm_kib(s.pid)
                    s.add(in_log[0], kib, kib if s.name.startswith("PostgreSQL") else vm_kib(s.pid, "VmHWM"))
                ahead = max(ahead, emitted[0] - in_log[0])
                finished = in_log[0] >= events and position[0] >= events
                now = time.monotonic() - t0
                if trace is not None and not traced.get("warm") and in_log[0] >= events * flatness.WARM:
                    traced["warm"] = _snapshots(trace, "warm")
                if now - last_print >= 10 or finished:
                    last_print = now
                    print(f"{now:5.0f}s {emitted[0]:>10,} {in_log[0]:>10,} {position[0]:>10,}  "
                          + "  ".join(f"{s.end / 1024:>{len(s.name) + 4}.0f}" for s, _ in ours) + "  | "
                          + "  ".join(f"{s.end / 1024:>{len(s.name) + 4}.0f}" for s in others), flush=True)
                if finished:
                    break
                if projector.poll() is not None or subscriber.poll() is not None:
                    print(f"a process ended early: projector {projector.returncode}, subscriber "
                          f"{subscriber.returncode}")
                    time.sleep(0.5)
                    for name, lines in errors.items():
                        if lines:
                            print(f"--- {name} stderr (last lines) ---\n" + "\n".join(lines))
                    return 1
                time.sleep(1.0)
            emitter.join(30)
            if trace is not None:
                traced["end"] = _snapshots(trace, "end")
            for s, progress in ours:  # the last reading while both processes still run
                s.add(progress[0], vm_kib(s.pid), vm_kib(s.pid, "VmHWM"))
    finally:
        for p in (subscriber, projector):
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
    seconds = time.monotonic() - t0
    load = os.getloadavg()
    print(f"\n{events:,} events in {seconds:.0f}s ({events / seconds:,.0f}/s end to end); load average at the "
          f"end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; largest backlog (emitted, not yet in the log) "
          f"{ahead:,} events")
    flat = _report(ours, others, events)
    if trace is not None:
        _trace_report(trace, traced)
    return 0 if flat else 1


def _report(ours: list[tuple[flatness.Samples, list[int]]], others: list[flatness.Samples], events: int) -> bool:
    """Print the table and the verdicts; True when the projector process and the subscriber are flat."""
    labels = [label for label, _ in flatness.MILESTONES] + ["end"]
    print(f"\nRSS (VmRSS, MiB) by progress: each process's own events (projector: in the log; subscriber: "
          f"applied; agent: emitted). Flat: end/warm <= {flatness.MAX_END_OVER_WARM:.2f} and slope after "
          f"warm-up <= {flatness.MAX_SLOPE_KIB:,.0f} KiB per 100k events (~10 bytes an event).")
    print(f"{'process':<32}" + "".join(f"{label:>8}" for label in labels)
          + f"{'peak':>8} {'end/warm':>9} {'KiB/100k':>9}  verdict")
    flat = True
    for s, _ in ours:
        v = flatness.verdict(s, events)
        print(f"{s.name:<32}" + "".join(f"{kib / 1024:>8.1f}" for _, kib in s.milestones(events))
              + f"{s.hwm_kib / 1024:>8.1f} {v.ratio:>9.3f} {v.slope:>9,.0f}  {v.describe()}")
        if s.name != "agent (this process)":
            flat = flat and v.flat
    print("context, not ours (peak: VmHWM for tansu, largest sample for PostgreSQL's PSS):")
    for s in others:
        print(f"{s.name:<32}" + "".join(f"{kib / 1024:>8.1f}" for _, kib in s.milestones(events))
              + f"{s.hwm_kib / 1024:>8.1f}")
    print("peak RSS per process (VmHWM): " + ", ".join(f"{s.name} {s.hwm_kib / 1024:,.1f} MiB" for s, _ in ours))
    print("RESULT: projector + publisher and subscriber " + ("FLAT" if flat else "NOT FLAT") +
          " (the agent's pending outcomes are bounded by AHEAD, shown for context)")
    return flat


def _snapshots(trace: Path, label: str) -> bool:
    ok = True
    for role in ("projector", "subscriber"):
        ok = heaptrace.request(trace, role, label) is not None and ok
    return ok


def _trace_report(trace: Path, traced: dict[str, bool]) -> None:
    print("\nheap trace (tracemalloc, warm -> end; attribution by the innermost frame of ours):")
    if not (traced.get("warm") and traced.get("end")):
        print("  snapshots missing (a process did not answer in time): no attribution")
        return
    for role in ("projector", "subscriber"):
        print("\n".join(heaptrace.report(trace, role, "warm", "end")))


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
    if "--projector" in sys.argv:
        sys.exit(projector_main())
    sys.exit(main(heap_trace="--heap-trace" in sys.argv))
