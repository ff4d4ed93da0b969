"""A projector process for ``bench batchcost`` that counts what each batch sends PostgreSQL and names its
threads for the kernel, so the benchmark can split the process's CPU by thread from /proc. Not for deployments.

Run as ``python -m eventstore.bench.batchprojector OUT`` with ``EVENTSTORE_*`` in the environment: SIGUSR1
writes its counters (batches, messages, statements, pipeline syncs, transactions, by thread) to OUT (JSON,
written whole then renamed), SIGTERM stops. Each Python thread's kernel name becomes its Python name (first
15 characters): ``projector-...`` is the batch thread, ``publisher`` the publisher; librdkafka's stay ``rdk:``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from eventstore.bench.launch import serve
from eventstore.core.gcpolicy import tune_for_batches
from eventstore.core.settings import Settings
from eventstore.projection.projector import Projector

COUNTS: Counter[str] = Counter()
CPU: defaultdict[str, float] = defaultdict(float)
STATEMENTS = os.environ.get("EVENTSTORE_BENCH_COUNT_STATEMENTS", "1") == "each"  # also count each statement's text


def _counting(what: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def counted(*args: Any, **kwargs: Any) -> Any:
        name = threading.current_thread().name
        thread = "batch thread" if name.startswith("projector-") else name[:15]
        COUNTS[f"{thread} {what}"] += 1
        if STATEMENTS and what == "statements" and len(args) > 1:
            COUNTS[f"{thread} | {' '.join(str(args[1]).split())[:70]}"] += 1
        return fn(*args, **kwargs)
    return counted


def count_statements() -> None:
    """Count each statement a cursor sends, each pipeline sync and each transaction block, by thread."""
    psycopg.Cursor.execute = _counting("statements", psycopg.Cursor.execute)  # type: ignore[method-assign]
    psycopg.Cursor.executemany = _counting("statements", psycopg.Cursor.executemany)  # type: ignore[method-assign]
    psycopg.Cursor.copy = _counting("statements", psycopg.Cursor.copy)  # type: ignore[method-assign]
    psycopg.Pipeline.sync = _counting("syncs", psycopg.Pipeline.sync)  # type: ignore[method-assign]
    psycopg.Connection.commit = _counting("commits", psycopg.Connection.commit)  # type: ignore[method-assign]
    psycopg.Connection.transaction = _counting("transactions", psycopg.Connection.transaction)  # type: ignore[method-assign]


# The steps of a batch, timed by the batch thread's CPU clock when EVENTSTORE_BENCH_STEPS=1 (module globals of
# eventstore.postgres.intake replaced by timed wrappers; the transaction's BEGIN/COMMIT and pipeline exit are the
# rest of write_batch).
STEPS = ("read_message", "_fence", "_known", "decide_batch", "_append", "apply_all", "record_outcomes",
         "_store_offsets")


def _timed(what: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            CPU[what] += time.thread_time() - t
    return timed


def time_steps() -> None:
    """Time each step of write_batch, write_batch itself, and the projector's loop steps on the CPU clock."""
    from eventstore.postgres import intake
    from eventstore.projection import projector

    for name in STEPS:
        setattr(intake, name, _timed(name, getattr(intake, name)))
    projector.write_batch = _timed("write_batch (all)", intake.write_batch)  # type: ignore[attr-defined]
    for name in ("_next_batch", "_process", "_watermarks"):
        setattr(projector.Projector, name, _timed(f"Projector.{name}", getattr(projector.Projector, name)))


def name_threads() -> None:
    """Give each Python thread its Python name as its kernel name (what /proc/PID/task/TID/comm shows)."""
    for t in threading.enumerate():
        if t.native_id is None:
            continue
        try:
            Path(f"/proc/self/task/{t.native_id}/comm").write_text(t.name[:15])
        except OSError:
            continue


def main(out: Path) -> int:
    if os.environ.get("EVENTSTORE_BENCH_COUNT_STATEMENTS", "1") != "0":
        count_statements()
    if os.environ.get("EVENTSTORE_BENCH_STEPS", "0") == "1":
        time_steps()
    proj = Projector(Settings.from_env())
    tune_for_batches()  # as `eventstore project` does before it starts its projector
    named = threading.Event()

    def name_once_ready() -> None:
        if not named.is_set() and proj.ready.is_set():
            name_threads()  # once the publisher's and the consumer's threads exist
            named.set()

    def snapshot() -> dict[str, Any]:
        name_threads()  # threads started since (a reconnected consumer's)
        return {"batches": proj.stats.batches, "messages": proj.stats.messages, "counts": dict(COUNTS),
                "cpu": dict(CPU)}

    return serve(proj, out, snapshot, tick=name_once_ready)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
