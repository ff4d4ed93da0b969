"""The drain benchmark's per-thread CPU split (eventstore/bench/drain.py), without servers."""

from __future__ import annotations

import os
import threading
import time

from eventstore.bench.drain import thread_cpu, thread_split


def test_thread_cpu_sees_a_busy_thread_of_this_process() -> None:
    before = thread_cpu(os.getpid())
    done = threading.Event()
    ident: list[int] = []

    def spin() -> None:
        ident.append(threading.get_native_id())
        end = time.process_time() + 0.3
        while time.process_time() < end and not done.is_set():
            sum(range(1000))

    t = threading.Thread(target=spin)
    t.start()
    t.join(10)
    after = thread_cpu(os.getpid())
    assert os.getpid() in before and os.getpid() in after  # the main thread is a task of its own
    if ident[0] in after:  # the thread may be gone from /proc once joined
        assert after[ident[0]][1] >= 0.0
    split = thread_split(before, after)
    assert "librdkafka" in split and split["librdkafka"] == 0.0  # no librdkafka client in this process


def test_thread_split_orders_python_threads_and_sums_librdkafka() -> None:
    before = {1: ("python", 1.0), 2: ("python", 5.0), 3: ("rdk:main", 0.5), 4: ("rdk:broker1", 0.0)}
    after = {1: ("python", 4.0), 2: ("python", 6.0), 3: ("rdk:main", 1.0), 4: ("rdk:broker1", 0.25),
             5: ("python", 0.5), 6: ("python", 0.0)}
    split = thread_split(before, after)
    assert split == {"python 1": 3.0, "python 2": 1.0, "python 3": 0.5, "librdkafka": 0.75}
