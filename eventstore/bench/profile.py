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

import psycopg

from eventstore.bench.writepath import CpuMeter, projector, throughput, wait_ready
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedServers
from eventstore.postgres.migrate import upgrade
from eventstore.sdk.client import AgentClient

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
        with psycopg.connect(url, autocommit=True) as conn, \
                projector(settings, "process", logdir / "projector.log") as ppid, \
                AgentClient("bench-profile", settings) as client:
            if ppid is None:
                raise RuntimeError("the profile needs a projector process")
            wait_ready(client, "pw")
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            postmaster = int(Path(f"/proc/{row[0] if row else 0}/stat").read_text().rsplit(")", 1)[1].split()[1])
            pids = {"agent (this process)": os.getpid(), "projector process": ppid, "postgres": postmaster}
            if servers.broker._proc is not None:
                pids["tansu"] = servers.broker._proc.pid
            spies = {"agent": _spy(os.getpid(), logdir / "agent.txt"),
                     "projector": _spy(ppid, logdir / "projector.txt")}
            time.sleep(1.0)  # py-spy attaches
            cpu = CpuMeter(pids)
            tp = throughput(client, conn, events, "pt", cpu)
            for spy in spies.values():
                _stop(spy)
    print(f"\nthroughput while sampled: {tp.rate:,.0f} events/s ({tp.events:,} events in {tp.seconds:.1f} s; "
          f"sampling costs some speed); correctness {'PASS' if tp.ok else 'FAIL'}")
    print("CPU per event: " + ", ".join(f"{k} {v / events * 1e6:.0f} us" for k, v in cpu.used.items()))
    for name in ("agent", "projector"):
        print(f"\n{name}:")
        raw = logdir / f"{name}.txt"
        print("\n".join("  " + line for line in (summarise(raw, PARTS[name]) if raw.exists() else ["no profile"])))
    return 0 if tp.ok else 1
