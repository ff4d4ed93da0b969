"""What the slowest events of a latency run wait on: the steps of the slowest 1-2 % and the stalls they overlap.

``eventstore bench latency`` times every event at each step (emit -> produced -> projector has it -> write
starts -> committed -> listener woke -> resolved, one monotonic clock for every process). A p99 is made by a
few stalls, each delaying every event that arrives while it lasts, so the median of each step says little
about it. This module takes the events at or above a percentile of the total and reports

- the mean of each step over them (the split at p99 / p98) next to the median event's;
- which stalls they overlapped, from probes of the same run: the collector's pauses in the agent and in the
  projector process (``gc.callbacks``), PostgreSQL statements slower than a threshold, autovacuum runs and
  checkpoints (from the benchmark server's own log, configured by :func:`configure_pg_log`), and the
  projector's batches that waited on the previous one;
- when in the run they were emitted (a tail clustered in the first second is the drain's aftermath);
- how long each component's threads waited for a CPU (``/proc/<pid>/task/*/schedstat``), per event.

The analysis (:func:`tail_report`) is pure; the probes read /proc, the collector and the server log.
"""

from __future__ import annotations

import gc
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg import sql

# The steps of brokerlatency's split ("lookup": listener woke -> handle resolved, a query only when unsealed).
STEPS = ("produce", "fetch", "queue", "write", "notify", "lookup")


@dataclass(frozen=True)
class Stall:
    """Something that held a component up for a while, on the monotonic clock: [start, end]."""

    start: float
    end: float
    kind: str  # "agent gc2", "projector gc0", "pg COMMIT", "autovacuum", "checkpoint", ...
    detail: str = ""  # the statement's start, the table, ...

    def overlaps(self, a: float, b: float) -> float:
        """Seconds of [a, b] covered by this stall."""
        return max(0.0, min(b, self.end) - max(a, self.start))


# -- the collector's pauses ----------------------------------------------------------------------


class GcPauses:
    """Notes each collection of this process (start, end, generation) on the monotonic clock."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float, int]] = []
        self._started = 0.0

    def _callback(self, phase: str, info: Mapping[str, Any]) -> None:
        now = time.monotonic()
        if phase == "start":
            self._started = now
        else:
            self.pauses.append((self._started, now, int(info.get("generation", -1))))

    def install(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def remove(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def take(self) -> list[tuple[float, float, int]]:
        out, self.pauses = self.pauses, []
        return out


def gc_stalls(pauses: Iterable[Sequence[float]], who: str) -> list[Stall]:
    """Collections as stalls; the oldest generation is named apart (it walks the whole heap)."""
    return [Stall(float(a), float(b), f"{who} gc{int(g)}") for a, b, g in pauses]


# -- waiting for a CPU ---------------------------------------------------------------------------


def run_delay(pid: int, children: bool = False) -> float:
    """Seconds the process's threads (and, with ``children``, its child processes' threads) have waited on
    a run queue, from /proc/<pid>/task/*/schedstat (second field, ns). Exited threads are not counted."""
    pids = [pid] + (_children(pid) if children else [])
    total = 0
    for p in pids:
        with suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                with suppress(OSError, IndexError, ValueError):
                    total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def _children(ppid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with suppress(OSError, IndexError, ValueError):
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == ppid:
                    out.append(int(d.name))
    return out


@dataclass
class RunDelayMeter:
    """Run-queue wait of each component between start() and stop() ("postgres": the postmaster and its
    backends)."""

    pids: dict[str, int]
    waited: dict[str, float] = field(default_factory=dict)

    def _sample(self) -> dict[str, float]:
        return {n: run_delay(p, children=(n == "postgres")) for n, p in self.pids.items()}

    def start(self) -> None:
        self.waited = self._sample()

    def stop(self) -> None:
        after = self._sample()
        self.waited = {n: max(0.0, after[n] - self.waited.get(n, 0.0)) for n in after}


# -- the server's log ----------------------------------------------------------------------------

PG_LOG_SETTINGS = {
    "log_line_prefix": "%n [%p] ",  # epoch seconds with milliseconds: no time zone to parse
    "log_autovacuum_min_duration": "0",
    "log_checkpoints": "on",
    "log_parameter_max_length": "0",  # the statement's text only, never its (large, binary) parameters
    "log_min_duration_statement": "5",
}
_ANY_PREFIX = re.compile(r"^\d+\.\d+ \[\d+\] ")
_PREFIX = re.compile(r"^(\d+\.\d+) \[(\d+)\] (?:LOG|WARNING):\s+(.*)$")
_DURATION = re.compile(r"duration: ([\d.]+) ms\s+(?:execute [^:]*|statement|bind [^:]*|parse [^:]*):\s*(\S+)")
_ELAPSED = re.compile(r"automatic (vacuum|analyze) of table \"([^\"]+)\".*?elapsed: ([\d.]+) s", re.S)
_CHECKPOINT_START = re.compile(r"checkpoint starting")
_CHECKPOINT_DONE = re.compile(r"checkpoint complete:.*?total=([\d.]+) s")


def configure_pg_log(conn: Any, threshold_ms: int = 5) -> Path | None:
    """Have the benchmark's own server log statements slower than ``threshold_ms``, every autovacuum and
    every checkpoint, with epoch timestamps; returns its log file (the embedded server's ``<data>/log``),
    or None when it cannot be found. ``conn``: an autocommit superuser connection."""
    for name, value in {**PG_LOG_SETTINGS, "log_min_duration_statement": str(threshold_ms)}.items():
        conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
    conn.execute("SELECT pg_reload_conf()")
    row = conn.execute("SHOW data_directory").fetchone()
    path = Path(str(row[0])) / "log" if row else None
    return path if path is not None and path.exists() else None


@dataclass
class PgLogReader:
    """Reads what the server logged since the last call, as stalls on the monotonic clock."""

    path: Path | None
    offset: int = 0

    def skip(self) -> None:
        """Forget what was logged so far."""
        with suppress(OSError):
            if self.path is not None:
                self.offset = self.path.stat().st_size

    def take(self) -> list[Stall]:
        if self.path is None:
            return []
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        return parse_pg_log(data.decode("utf-8", "replace"), time.time() - time.monotonic())


def parse_pg_log(text: str, wall_minus_mono: float) -> list[Stall]:
    """Stalls from the server's log (:data:`PG_LOG_SETTINGS`): slow statements (``pg <first word>``, the
    statement's start in ``detail``), autovacuum runs and checkpoints; each log time is when it ended. A
    message's continuation lines (no prefix: autovacuum's report) belong to the message before them."""
    entries: list[tuple[float, str]] = []
    for line in text.splitlines():
        m = _PREFIX.match(line)
        if m is not None:
            entries.append((float(m.group(1)) - wall_minus_mono, m.group(3)))
        elif entries and not _ANY_PREFIX.match(line):
            at, message = entries[-1]
            entries[-1] = (at, f"{message} {line.strip()}")
    out: list[Stall] = []
    checkpoint_start: float | None = None
    for at, message in entries:
        if (d := _DURATION.search(message)) is not None:
            seconds = float(d.group(1)) / 1000
            word = d.group(2).upper().rstrip(";")
            out.append(Stall(at - seconds, at, f"pg {word}", message[d.start(2):d.start(2) + 70]))
        elif (v := _ELAPSED.search(message)) is not None:
            out.append(Stall(at - float(v.group(3)), at, f"auto{v.group(1)}", v.group(2)))
        elif _CHECKPOINT_START.search(message):
            checkpoint_start = at
        elif (c := _CHECKPOINT_DONE.search(message)) is not None:
            start = checkpoint_start if checkpoint_start is not None else at - float(c.group(1))
            out.append(Stall(start, at, "checkpoint", message[:120]))
            checkpoint_start = None
    return out


# -- the analysis (pure) -------------------------------------------------------------------------


# One event's timestamps: sent, produced (broker ack), handed (projector has it), started (its write),
# committed, woke (agent's listener), resolved. A plain tuple of floats: the collector stops tracking it, so
# thousands kept for the report do not grow the agent's oldest generation (a benchmark must not cause the
# full collections it reports).
Timeline = tuple[float, float, float, float, float, float, float]


def _total(t: Timeline) -> float:
    return t[-1] - t[0]


@dataclass
class TailReport:
    """The slowest events of a run against its median event."""

    percentile: float
    threshold_ms: float
    events: int
    mean_steps_ms: dict[str, float]
    median_steps_ms: dict[str, float]
    overlapped: dict[str, tuple[int, float]]  # stall kind -> (tail events overlapping one, mean ms overlapped)
    by_second: dict[int, int]  # second of the run the tail events were emitted in -> how many
    longest: list[Stall] = field(default_factory=list)  # the longest stalls the tail overlapped

    def lines(self) -> list[str]:
        steps = ", ".join(f"{s} {self.mean_steps_ms[s]:.1f}" for s in STEPS)
        median = ", ".join(f"{s} {self.median_steps_ms[s]:.1f}" for s in STEPS)
        out = [f"slowest {100 - self.percentile:g}% ({self.events} events, total >= {self.threshold_ms:.1f} ms), "
               f"mean ms: {steps}",
               f"  the median event's steps, ms: {median}"]
        if self.overlapped:
            kinds = sorted(self.overlapped.items(), key=lambda kv: (-kv[1][0], -kv[1][1]))
            out.append("  overlapping (tail events, mean ms of the event's time covered): "
                       + "; ".join(f"{k} {n} ({ms:.1f})" for k, (n, ms) in kinds[:8]))
        else:
            out.append("  overlapping: no collector pause, slow statement, autovacuum or checkpoint")
        if self.longest:
            out.append("  longest: " + "; ".join(
                f"{st.kind} {(st.end - st.start) * 1000:.0f} ms" + (f" ({st.detail})" if st.detail else "")
                for st in self.longest))
        out.append("  emitted in second of the run: "
                   + ", ".join(f"{s}: {n}" for s, n in sorted(self.by_second.items())))
        return out


def _median(xs: list[float]) -> float:
    ys = sorted(xs)
    return ys[len(ys) // 2] if ys else 0.0


def tail_report(timelines: Sequence[Timeline], stalls: Sequence[Stall], percentile: float = 99.0,
                longest_shown: int = 3) -> TailReport | None:
    """The events at or above ``percentile`` of the total time, their mean steps and the stalls they
    overlapped (each stall kind counted once per event, with the time of the event it covered)."""
    if not timelines:
        return None
    ordered = sorted(timelines, key=_total)
    cut = min(len(ordered) - 1, int(percentile / 100 * len(ordered)))
    tail = ordered[cut:]
    t0 = min(t[0] for t in timelines)
    mean_steps = {s: sum(t[i + 1] - t[i] for t in tail) / len(tail) * 1000 for i, s in enumerate(STEPS)}
    median_steps = {s: _median([t[i + 1] - t[i] for t in timelines]) * 1000 for i, s in enumerate(STEPS)}
    overlapped: dict[str, list[float]] = {}
    hit: set[Stall] = set()
    for t in tail:
        covered: dict[str, float] = {}
        a, b = t[0], t[-1]
        for st in stalls:
            o = st.overlaps(a, b)
            if o > 0:
                covered[st.kind] = covered.get(st.kind, 0.0) + o
                hit.add(st)
        for kind, o in covered.items():
            overlapped.setdefault(kind, []).append(o)
    by_second: dict[int, int] = {}
    for t in tail:
        s = int(t[0] - t0)
        by_second[s] = by_second.get(s, 0) + 1
    longest = sorted(hit, key=lambda st: st.start - st.end)[:longest_shown]
    return TailReport(percentile, _total(ordered[cut]) * 1000, len(tail), mean_steps, median_steps,
                      {k: (len(v), sum(v) / len(v) * 1000) for k, v in overlapped.items()}, by_second, longest)


def slow_writes(written: Sequence[Sequence[Any]], at_least: float = 0.010) -> list[Stall]:
    """The projector's batch writes that took ``at_least`` seconds, as stalls (an event that arrives meanwhile
    waits for it: its "fetch" step grows)."""
    return [Stall(float(w[0]), float(w[1]), f"projector write >= {at_least * 1000:g} ms") for w in written
            if float(w[1]) - float(w[0]) >= at_least]


@dataclass
class TailProbes:
    """The tail split's probes (eventstore.bench.tailsplit): the agent's collector pauses (this process), the
    benchmark server's log, and each component's run-queue wait."""

    agent_gc: GcPauses
    pg_log: PgLogReader
    delays: RunDelayMeter

    def start(self) -> None:
        self.agent_gc.take()
        self.pg_log.skip()
        self.delays.start()

    def stop(self, noted: dict[str, list[Any]]) -> tuple[list[Stall], dict[str, float]]:
        """The stalls seen since start() (with the projector's collector pauses and slow writes from
        ``noted``) and the run-queue wait of each component, seconds."""
        self.delays.stop()
        stalls = (gc_stalls(self.agent_gc.take(), "agent") + gc_stalls(noted.get("gc", []), "projector")
                  + self.pg_log.take() + slow_writes(noted["written"]))
        return stalls, self.delays.waited

    @staticmethod
    def heaps(noted: dict[str, list[Any]]) -> dict[str, tuple[int, int]]:
        """Objects the collector tracks (and of them frozen) in the agent's process and the projector's."""
        out = {"agent": (len(gc.get_objects()), gc.get_freeze_count())}
        if len(noted.get("heap", [])) == 2:
            out["projector"] = (int(noted["heap"][0]), int(noted["heap"][1]))
        return out
