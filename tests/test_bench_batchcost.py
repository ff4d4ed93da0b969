"""The batch-cost benchmark's pieces without servers (bench/batchcost.py, bench/batchprojector.py): threads are
named for the kernel and charged to their role, statements are counted by thread, a step's CPU is timed, and the
fixed-per-batch split solves the linear model it claims."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from eventstore.bench import batchprojector
from eventstore.bench.batchcost import Run, _role, fixed_cost
from eventstore.bench.drain import thread_cpu


def test_fixed_cost_recovers_a_known_split(capsys: pytest.CaptureFixture[str]) -> None:
    # 1,500 µs per batch + 50 µs per event, at batches of 5 and of 50.
    def run(events: int, batches: int) -> Run:
        cpu = (1500e-6 * batches + 50e-6 * events)
        return Run(events=events, batches=batches, seconds=1.0,
                   cpu={"batch thread": cpu, "PostgreSQL (all)": 2 * cpu})

    fixed_cost(run(1000, 200), run(1000, 20))
    out = capsys.readouterr().out
    assert "batch thread: ~1,500 µs per batch + ~50.0 µs per event" in out
    assert "PostgreSQL: ~3,000 µs per batch + ~100.0 µs per event" in out


def test_fixed_cost_needs_two_batch_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    same = Run(events=100, batches=10, seconds=1.0, cpu={"batch thread": 1.0})
    fixed_cost(same, same)
    assert capsys.readouterr().out == ""


def test_threads_are_named_for_the_kernel_and_charged_to_their_role() -> None:
    main_comm = Path("/proc/self/comm").read_text().strip()
    named, release = threading.Event(), threading.Event()

    def work() -> None:
        end = time.thread_time() + 0.2
        while time.thread_time() < end:
            pass
        named.wait(30)
        release.wait(30)

    worker = threading.Thread(target=work, name="projector-some-group")
    worker.start()
    try:
        batchprojector.name_threads()
        named.set()
        time.sleep(0.25)
        threads = thread_cpu(os.getpid())
        name, cpu = threads[worker.native_id or 0]
        assert cpu >= 0.1
        assert name == "projector-some-"  # 15 characters: the kernel's limit
        assert _role(name) == "batch thread"
    finally:
        release.set()
        worker.join(30)
        Path("/proc/self/comm").write_text(main_comm)
    assert _role("publisher") == "publisher" and _role("rdk:main") == "librdkafka"
    assert _role("MainThread") == "other threads"


def test_statements_are_counted_by_role_and_steps_timed() -> None:
    batchprojector.COUNTS.clear()
    batchprojector.CPU.clear()
    seen: list[str] = []
    execute = batchprojector._counting("statements", lambda _cur, query: seen.append(query))
    timed = batchprojector._timed("step", lambda: sum(range(200_000)))
    out: list[int] = []

    def work() -> None:
        execute(None, "SELECT 1")
        execute(None, "SELECT 2")
        out.append(timed())

    worker = threading.Thread(target=work, name="projector-g")
    worker.start()
    worker.join(30)
    assert seen == ["SELECT 1", "SELECT 2"]
    assert batchprojector.COUNTS["batch thread statements"] == 2
    assert out == [sum(range(200_000))]
    assert batchprojector.CPU["step"] > 0.0
