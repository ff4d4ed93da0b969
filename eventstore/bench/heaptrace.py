"""Opt-in heap attribution for ``eventstore bench memory --heap-trace``: where a process's Python heap grows.

A process started with ``EVENTSTORE_BENCH_HEAPTRACE=<dir>`` runs a small thread that answers snapshot
requests: the benchmark drops ``<role>.<label>.req`` into the directory and the process writes
``<role>.<label>.json`` (live objects by type from ``gc.get_objects``, Python's allocated blocks, glibc's
``mallinfo2``, VmRSS) and then ``<role>.<label>.done``. The first request (``warm``) also starts
``tracemalloc``, so the snapshot of the last one (``end``, ``<role>.end.snap``) holds exactly the
allocations made after warm-up that are still alive: the growth, with the working churn of one batch. The
benchmark prints it by component (the projector's and the publisher's threads run different code, so each
allocation is attributed by the innermost frame of ours in its traceback), by allocation site, and the
object types that grew. Tracing slows the process many times over from warm-up on, so it is off in the
main figure; use it with a smaller run (``--events 100000``).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import sys
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

ENV = "EVENTSTORE_BENCH_HEAPTRACE"
FRAMES = 16

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


def trim_every(seconds: float) -> None:
    """Return the free memory of glibc's heaps to the kernel (``malloc_trim(0)``) every ``seconds``, in a
    daemon thread: the experiment behind ``eventstore bench memory --malloc-trim``."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return

    def loop() -> None:
        while True:
            time.sleep(seconds)
            trim(0)

    threading.Thread(target=loop, name="malloc-trim", daemon=True).start()


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def install(role: str) -> None:
    """In a benchmarked process: answer snapshot requests, when the env asks."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    threading.Thread(target=_serve, args=(Path(folder), role), name="heaptrace", daemon=True).start()


def _serve(folder: Path, role: str) -> None:
    while True:
        for req in folder.glob(f"{role}.*.req"):
            label = req.name[len(role) + 1:-len(".req")]
            _snapshot(folder, f"{role}.{label}")
            req.unlink(missing_ok=True)
        time.sleep(0.2)


def _snapshot(folder: Path, stem: str) -> None:
    gc.collect()  # count what is alive, not what a collection would free
    if tracemalloc.is_tracing():
        tracemalloc.take_snapshot().dump(str(folder / f"{stem}.snap"))
    types = Counter(type(o).__name__ for o in gc.get_objects())
    traced = tracemalloc.get_traced_memory()[0]
    info = {"types": dict(types), "traced": traced, "blocks": sys.getallocatedblocks(), "malloc": mallinfo(),
            "rss_kib": _vm("VmRSS"), "hwm_kib": _vm("VmHWM"), "threads": threading.active_count()}
    (folder / f"{stem}.json").write_text(json.dumps(info))
    if not tracemalloc.is_tracing():
        tracemalloc.start(FRAMES)  # from now on: what is still alive at the next snapshot was allocated after it
    (folder / f"{stem}.done").write_text("")


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
    """The heap growth of ``role`` between two snapshots: totals, by component, by allocation site, by type."""
    ja = json.loads((folder / f"{role}.{before}.json").read_text())
    jb = json.loads((folder / f"{role}.{after}.json").read_text())
    mib = 2**20
    lines = [f"  {role}: VmRSS {ja['rss_kib'] / 1024:,.1f} -> {jb['rss_kib'] / 1024:,.1f} MiB; Python allocated blocks "
             f"{ja['blocks']:,} -> {jb['blocks']:,}; malloc in use {ja['malloc'].get('in_use', 0) / mib:,.1f} -> "
             f"{jb['malloc'].get('in_use', 0) / mib:,.1f} MiB, free inside malloc's heaps "
             f"{ja['malloc'].get('free', 0) / mib:,.1f} -> {jb['malloc'].get('free', 0) / mib:,.1f} MiB, mmapped "
             f"{ja['malloc'].get('mmapped', 0) / mib:,.1f} -> {jb['malloc'].get('mmapped', 0) / mib:,.1f} MiB; "
             f"threads {ja['threads']} -> {jb['threads']}"]
    grown = Counter(jb["types"])
    grown.subtract(Counter(ja["types"]))
    lines.append("    live objects by type, largest growth: " + (", ".join(
        f"{name} {n:+,}" for name, n in grown.most_common(8) if n > 0) or "none"))
    snap_path = folder / f"{role}.{after}.snap"
    if not snap_path.exists():
        return lines
    skip = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
    snap = tracemalloc.Snapshot.load(str(snap_path)).filter_traces(skip)
    comp = _by_component(snap)
    lines.append(f"    allocated after {before} and alive at {after} (tracemalloc, {jb['traced'] / mib:,.2f} MiB), "
                 "by component: " + ", ".join(f"{c} {n / 1024:,.0f} KiB" for c, n in comp.most_common()))
    lines.append("    by allocation site:")
    for stat in snap.statistics("lineno")[:top]:
        frame = stat.traceback[0]
        where = f"{_short(frame.filename)}:{frame.lineno}"
        lines.append(f"      {stat.size / 1024:10,.1f} KiB {stat.count:9,} blocks  {where}")
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
