"""``eventstore bench profile``: where the write path's time goes, per component, in one throughput run.

py-spy (the ``bench`` extra) samples the agent (this process: SDK ``emit``) and the projector process
while N events go end to end; CPU seconds of tansu and PostgreSQL come from /proc (they are not Python).
For each Python process it prints the functions where samples land (self time, non-idle threads) and
the share of a few inclusive parts (validation, encoding, the batch transaction ...).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

from eventstore.bench import agents as bench_agents
from eventstore.bench.drain import prefill
from eventstore.bench.launch import head, server_pids
from eventstore.bench.writepath import (
    CpuMeter,
    Throughput,
    projector,
    publish_from_head,
    throughput,
    wait_ready,
)
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedServers
from eventstore.postgres.migrate import upgrade

# Inclusive parts worth naming: a sample counts for a part when any frame of its stack matches.
PARTS = {
    "agent": ["build_envelope", "validate_event", "encode (", "expect (", "produce", "_poll (", "_run (",
              "_recheck ("],
    "projector": ["_next_batch", "write_batch", "decode", "append (", "chain_hash", "execute (", "apply",
                  "notify", "commit ("],
}


def _strip_line(frame: str) -> str:
    """'func (path/file.py:123)' -> 'func (file.py)'."""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.rsplit(':', 1)[0]).name})" if where else name


def summarise(raw: Path, part_names: list[str], top: int = 15) -> list[str]:
    """Top self-time functions and named inclusive parts from py-spy's raw (collapsed) output."""
    leaves: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        total += count
        leaves[_strip_line(frames[-1])] += count
        for p in part_names:
            if any(p in f for f in frames):
                parts[p] += count
    if not total:
        return ["no samples"]
    out = [f"{total} samples (non-idle threads); self time:"]
    out += [f"  {n / total:6.1%}  {name}" for name, n in leaves.most_common(top)]
    out.append("inclusive (a sample counts for each part on its stack):")
    out += [f"  {parts[p] / total:6.1%}  {p.strip(' (')}" for p in part_names]
    return out


def _spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([shutil.which("py-spy") or "py-spy", "record", "--pid", str(pid), "--rate", "250",
                             "--format", "raw", "--nonblocking", "--threads", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(60)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()


def _profile_write_path(servers: EmbeddedServers, settings: Settings, conn: psycopg.Connection[Any], events: int,
                        logdir: Path) -> tuple[dict[str, int], Throughput, CpuMeter]:
    """Sample the agent and the projector process during one end-to-end throughput run."""
    with projector(settings, "process", logdir / "projector.log") as ppid, \
            bench_agents.client("bench-profile", settings) as client:
        if ppid is None:
            raise RuntimeError("the profile needs a projector process")
        wait_ready(client, "pw")
        pids = {"agent (this process)": os.getpid(), "projector process": ppid, **server_pids(servers, conn)}
        spies = {"agent": _spy(os.getpid(), logdir / "agent.txt"),
                 "projector": _spy(ppid, logdir / "projector.txt")}
        time.sleep(1.0)  # py-spy attaches
        cpu = CpuMeter(pids)
        tp = throughput(client, conn, events, "pt", cpu)
        for spy in spies.values():
            _stop(spy)
    return pids, tp, cpu


def _profile_drain(settings: Settings, n: int, conn: psycopg.Connection[Any], pids: dict[str, int],
                   logdir: Path) -> tuple[dict[str, float], float]:
    """Pre-fill n events, then sample a fresh projector process while it drains them."""
    prefill(settings, n)
    start = publish_from_head(conn, settings)  # its publisher does not republish the end-to-end run's events
    with projector(settings, "process", logdir / "projector-drain.log") as ppid:
        if ppid is None:
            raise RuntimeError("the profile needs a projector process")
        spy = _spy(ppid, logdir / "projector-drain.txt")
        cpu = CpuMeter({**{k: v for k, v in pids.items() if not k.startswith(("projector", "agent"))},
                        "projector process": ppid})
        cpu.start()
        t0 = time.perf_counter()
        deadline = time.monotonic() + 600
        while head(conn) < start + n:
            if time.monotonic() > deadline:
                raise RuntimeError("the drain did not finish within 600 s")
            time.sleep(0.01)
        seconds = time.perf_counter() - t0
        cpu.stop()
        _stop(spy)
    return cpu.used, n / seconds


def main(events: int = 100_000) -> int:
    """Profile one throughput run; 1 when py-spy is missing or the run's correctness check failed."""
    if shutil.which("py-spy") is None:
        print("bench profile: py-spy is not installed (pip install -e '.[bench]')")
        return 1
    logdir = Path(tempfile.mkdtemp(prefix="eventstore-profile-"))
    print(f"profile of a write-path run of {events:,} events; load average {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} CPUs (shared machine); raw profiles in {logdir}", flush=True)
    with EmbeddedServers(None) as servers:
        url = servers.postgres.url
        upgrade(url)
        run = uuid.uuid4().hex[:6]
        settings = Settings.from_env().with_servers(url, servers.broker.bootstrap).replace(
            namespace=f"prof-{run}", projector_group=f"prof-{run}")
        with psycopg.connect(url, autocommit=True) as conn:
            pids, tp, cpu = _profile_write_path(servers, settings, conn, events, logdir)
            drain_cpu, drain_rate = _profile_drain(settings.replace(namespace=f"profd-{run}",
                                                                    projector_group=f"profd-{run}"),
                                                   events, conn, pids, logdir)
    print(f"\nthroughput while sampled: {tp.rate:,.0f} events/s ({tp.events:,} events in {tp.seconds:.1f} s; "
          f"sampling costs some speed); correctness {'PASS' if tp.ok else 'FAIL'}")
    print("CPU per event: " + ", ".join(f"{k} {v / events * 1e6:.0f} us" for k, v in cpu.used.items()))
    print(f"drain of {events:,} pre-filled events while sampled: {drain_rate:,.0f} events/s; CPU per event: " +
          ", ".join(f"{k} {v / events * 1e6:.0f} us" for k, v in drain_cpu.items()))
    for name in ("agent", "projector", "projector-drain"):
        print(f"\n{name}{' (the drain: no agent)' if name == 'projector-drain' else ''}:")
        raw = logdir / f"{name}.txt"
        parts = PARTS[name.split("-")[0]]
        print("\n".join("  " + line for line in (summarise(raw, parts) if raw.exists() else ["no profile"])))
    return 0 if tp.ok else 1
