"""The benchmark's per-thread CPU split and collector counter (bench/threadcpu.py), without servers: CPU a
named thread burns is charged to its role, the calling thread's to the caller, a full collection is counted."""

from __future__ import annotations

import gc
import threading
import time

from eventstore.bench.threadcpu import GcPauses, ThreadCpu


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_cpu_is_charged_to_the_thread_that_used_it() -> None:
    meter = ThreadCpu()
    meter.start()
    burnt, release = threading.Event(), threading.Event()

    def work() -> None:
        _burn(0.3)
        burnt.set()
        release.wait(30)

    worker = threading.Thread(target=work, name="producer-bench")
    worker.start()
    burnt.wait(30)
    meter.sample()  # the worker is alive here and has used its CPU; it ends before stop()
    release.set()
    worker.join(30)
    _burn(0.2)
    meter.stop()
    assert meter.used.get("producer poller", 0.0) >= 0.2
    assert meter.used.get("calling thread", 0.0) >= 0.1
    assert meter.used.get("outcome listener", 0.0) == 0.0


def test_collector_time_and_full_collections_are_counted() -> None:
    pauses = GcPauses()
    pauses.start()
    cycles = []
    for _ in range(50_000):
        a: list[object] = []
        a.append(a)
        cycles.append(a)
    del cycles
    gc.collect()
    pauses.stop()
    assert pauses.full >= 1 and pauses.seconds > 0.0
    assert pauses._callback not in gc.callbacks
