"""CPU seconds per thread of this process, grouped by role, from ``/proc/self/task`` (Linux).

``eventstore bench agent`` splits the agent's CPU per event into the calling thread, the SDK's producer
poller, its outcome listener, librdkafka's own threads and the rest, so a change can be pinned on the
thread that pays for it. Threads are told apart by their Python name (``threading`` knows each
thread's native id) and, for librdkafka's threads (not Python's), by their kernel name (``rdk:...``).
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from eventstore.bench.launch import stat_cpu

_TASKS = Path("/proc/self/task")


def _thread_cpu(tid: str) -> tuple[str, float]:
    """(kernel name, CPU seconds) of one thread of this process; ("", 0.0) once it has ended."""
    try:
        stat = (_TASKS / tid / "stat").read_text()
        comm = (_TASKS / tid / "comm").read_text().strip()
    except OSError:
        return "", 0.0
    return comm, stat_cpu(stat)


def default_role(python_name: str | None, comm: str, caller: int, tid: int) -> str:
    """The role of a thread: the caller, the SDK's threads by their name prefix, librdkafka's, or other."""
    if tid == caller:
        return "calling thread"
    if python_name is not None:
        if python_name.startswith("producer-"):
            return "producer poller"
        if python_name.startswith("outcomes-"):
            return "outcome listener"
    if comm.startswith("rdk:"):
        return "librdkafka threads"
    return "other threads"


class ThreadCpu:
    """CPU seconds by role between :meth:`start` and :meth:`stop`; threads that ended in between keep
    what they used up to the last sample that saw them (sample often enough: :meth:`sample`)."""

    def __init__(self, role: Callable[[str | None, str, int, int], str] = default_role) -> None:
        self._role = role
        self._caller = threading.get_native_id()
        self._first: dict[int, float] = {}
        self._last: dict[int, tuple[str, float]] = {}
        self.used: dict[str, float] = {}

    def _read(self) -> dict[int, tuple[str, float]]:
        names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
        out: dict[int, tuple[str, float]] = {}
        try:
            tids = os.listdir(_TASKS)
        except OSError:
            return out
        for tid in tids:
            comm, cpu = _thread_cpu(tid)
            if comm:
                n = int(tid)
                out[n] = (self._role(names.get(n), comm, self._caller, n), cpu)
        return out

    def start(self) -> None:
        snap = self._read()
        self._first = {tid: cpu for tid, (_, cpu) in snap.items()}
        self._last = dict(snap)

    def sample(self) -> None:
        """Note the threads alive now (a thread started and ended between start and stop counts too)."""
        self._last.update(self._read())

    def stop(self) -> None:
        self.sample()
        used: dict[str, float] = {}
        for tid, (role, cpu) in self._last.items():
            used[role] = used.get(role, 0.0) + cpu - self._first.get(tid, 0.0)
        self.used = used


class GcPauses:
    """CPU time this process spent in the garbage collector between :meth:`start` and :meth:`stop` (on any
    thread: each collection is timed with the CPU clock of the thread that runs it), and the number of full
    (oldest-generation) collections: CPython's share of an emit, which grows with the size of the heap."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0
        self._began = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.thread_time()
        else:
            self.seconds += time.thread_time() - self._began
            self.full += info.get("generation") == 2

    def start(self) -> None:
        self.seconds, self.full = 0.0, 0
        gc.callbacks.append(self._callback)

    def stop(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
