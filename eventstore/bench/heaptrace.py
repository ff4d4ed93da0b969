"""Opt-in heap attribution for ``eventstore bench memory --heap-trace``: where a process's Python heap grows.

A process started with ``EVENTSTORE_BENCH_HEAPTRACE=<dir>`` traces its allocations (``tracemalloc``) from
the start and runs a small thread that answers snapshot requests: the benchmark drops ``<role>.<label>.req``
into the directory, the process writes ``<role>.<label>.snap`` (the tracemalloc snapshot) and
``<role>.<label>.json`` (live objects by type from ``gc.get_objects``, traced bytes, glibc's ``mallinfo2``
and VmRSS), then ``<role>.<label>.done``. The benchmark diffs the warm and end snapshots: bytes by component
(the projector's and the publisher's threads run different code, so each allocation is attributed by the
innermost frame of ours in its traceback), the top allocation sites, and the object types that grew.
Tracing slows a process several times, so it is off in the main figure.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

ENV = "EVENTSTORE_BENCH_HEAPTRACE"
FRAMES = 40

# Component of an allocation: the innermost frame (most recent call) from one of these files decides.
COMPONENTS = (
    ("eventstore/projection/publisher.py", "publisher"),
    ("eventstore/projection/handoff.py", "hand-off"),
    ("eventstore/projection/projector.py", "projector"),
    ("eventstore/postgres/intake.py", "projector"),
    ("consumers/", "subscriber"),
    ("eventstore/sdk/", "sdk"),
)


def component_of(filenames: list[str]) -> str:
    """The component an allocation belongs to, from its traceback's filenames ordered most recent first."""
    for name in filenames:
        path = name.replace(os.sep, "/")
        for suffix, component in COMPONENTS:
            if suffix in path:
                return component
    return "other (imports, clients, interpreter)"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def mallinfo() -> dict[str, int]:
    """glibc's heap figures (``mallinfo2``): bytes in use, free inside the heap, mmapped; {} elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return {}
    fn.restype = _MallInfo2
    m = fn()
    return {"in_use": int(m.uordblks), "free": int(m.fordblks), "mmapped": int(m.hblkhd),
            "arena": int(m.arena)}


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def install(role: str) -> None:
    """In a benchmarked process: trace allocations and answer snapshot requests, when the env asks."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    tracemalloc.start(FRAMES)
    threading.Thread(target=_serve, args=(Path(folder), role), name="heaptrace", daemon=True).start()


def _serve(folder: Path, role: str) -> None:
    while True:
        for req in folder.glob(f"{role}.*.req"):
            label = req.name[len(role) + 1:-len(".req")]
            _snapshot(folder / f"{role}.{label}")
            req.unlink(missing_ok=True)
        time.sleep(0.2)


def _snapshot(stem: Path) -> None:
    gc.collect()  # count what is alive, not what a collection would free
    snap = tracemalloc.take_snapshot()
    snap.dump(str(stem.with_suffix(".snap")))
    types = Counter(type(o).__name__ for o in gc.get_objects())
    traced, peak = tracemalloc.get_traced_memory()
    info = {"types": dict(types), "traced": traced, "traced_peak": peak, "malloc": mallinfo(),
            "rss_kib": _vm("VmRSS"), "hwm_kib": _vm("VmHWM"), "threads": threading.active_count()}
    stem.with_suffix(".json").write_text(json.dumps(info))
    stem.with_suffix(".done").write_text("")


def request(folder: Path, role: str, label: str, timeout: float = 120.0) -> dict[str, Any] | None:
    """In the benchmark: ask ``role`` for a snapshot named ``label`` and wait for it; None on timeout."""
    done = folder / f"{role}.{label}.done"
    (folder / f"{role}.{label}.req").write_text("")
    deadline = time.monotonic() + timeout
    while not done.exists():
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)
    result: dict[str, Any] = json.loads((folder / f"{role}.{label}.json").read_text())
    return result


def report(folder: Path, role: str, before: str, after: str, top: int = 12) -> list[str]:
    """The heap growth of ``role`` between two snapshots: by component, by allocation site, by type."""
    skip = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap*>")]
    a = tracemalloc.Snapshot.load(str(folder / f"{role}.{before}.snap")).filter_traces(skip)
    b = tracemalloc.Snapshot.load(str(folder / f"{role}.{after}.snap")).filter_traces(skip)
    ja = json.loads((folder / f"{role}.{before}.json").read_text())
    jb = json.loads((folder / f"{role}.{after}.json").read_text())
    lines = [f"  {role}: VmRSS {ja['rss_kib'] / 1024:,.1f} -> {jb['rss_kib'] / 1024:,.1f} MiB, Python heap traced "
             f"{ja['traced'] / 2**20:,.1f} -> {jb['traced'] / 2**20:,.1f} MiB, malloc in use "
             f"{ja['malloc'].get('in_use', 0) / 2**20:,.1f} -> {jb['malloc'].get('in_use', 0) / 2**20:,.1f} MiB, "
             f"malloc free inside its arenas {ja['malloc'].get('free', 0) / 2**20:,.1f} -> "
             f"{jb['malloc'].get('free', 0) / 2**20:,.1f} MiB, threads {ja['threads']} -> {jb['threads']}"]
    comp_a, comp_b = _by_component(a), _by_component(b)
    lines.append("    traced bytes by component (" + before + " -> " + after + "): " + ", ".join(
        f"{c} {comp_a.get(c, 0) / 2**20:,.2f} -> {comp_b.get(c, 0) / 2**20:,.2f} MiB"
        for c in sorted(set(comp_a) | set(comp_b), key=lambda c: -comp_b.get(c, 0))))
    lines.append(f"    top allocation sites by growth ({before} -> {after}):")
    for stat in b.compare_to(a, "lineno")[:top]:
        frame = stat.traceback[0]
        lines.append(f"      {stat.size_diff / 1024:+10,.1f} KiB {stat.count_diff:+9,} blocks  "
                     f"{_short(frame.filename)}:{frame.lineno}")
    grown = Counter(jb["types"])
    grown.subtract(Counter(ja["types"]))
    lines.append("    live objects by type, growth: " + (", ".join(
        f"{name} {n:+,}" for name, n in grown.most_common(8) if n > 0) or "none"))
    return lines


def _by_component(snap: tracemalloc.Snapshot) -> Counter[str]:
    out: Counter[str] = Counter()
    for trace in snap.traces:
        names = [f.filename for f in reversed(trace.traceback)]  # most recent call first
        out[component_of(names)] += trace.size
    return out


def _short(filename: str) -> str:
    for marker in ("/site-packages/", "/eventstore/", "/consumers/", "/lib/python"):
        if marker in filename:
            return filename[filename.index(marker) + 1:]
    return filename
