"""A projector process for ``bench latency`` that notes when its consumer hands over each intake message
and when that message's batch committed, on the machine's monotonic clock (the benchmark process reads
the same clock, so the steps of one event compare exactly across the two processes). Not for deployments.

Run as ``python -m eventstore.bench.timedprojector OUT`` with ``EVENTSTORE_*`` in the environment:
SIGUSR1 writes what was noted since the last dump to OUT (JSON, written whole then renamed), SIGTERM stops.
It also notes the collector's pauses, and sets the collector as ``eventstore project`` does
(core/gcpolicy.py) unless ``EVENTSTORE_BENCH_PROJECTOR_GC=default`` keeps CPython's settings, and
``EVENTSTORE_BENCH_KAFKA_COMMIT_SECONDS`` replaces the projector's Kafka commit interval (0: after every
batch, as before Round 4), to compare.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer

from eventstore.bench.launch import serve
from eventstore.bench.tailsplit import GcPauses
from eventstore.core.gcpolicy import tune_for_batches
from eventstore.core.settings import Settings
from eventstore.postgres.intakebatch import BatchResult, IntakeMessage
from eventstore.projection.projector import Projector

Noted = list[tuple[float, float, list[bytes | None]]]


class TimedProjector(Projector):
    """A Projector noting (when, values) per consumer hand-over and (started, committed, values) per write."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.handed: Noted = []
        self.written: Noted = []
        self.gc = GcPauses().install()

    def _next_batch(self, consumer: Consumer) -> list[IntakeMessage]:
        batch = super()._next_batch(consumer)
        if batch:
            now = time.monotonic()
            self.handed.append((now, now, [m.value for m in batch]))
        return batch

    def _write(self, conn: psycopg.Connection[Any], batch: list[IntakeMessage],
               poisoned: dict[tuple[int, int], str]) -> BatchResult:
        started = time.monotonic()
        result = super()._write(conn, batch, poisoned)
        self.written.append((started, time.monotonic(), [m.value for m in batch]))
        return result

    def take(self) -> dict[str, list[Any]]:
        """What was noted since the last call, with each message as its event id; "gc": the collector's
        pauses (start, end, generation)."""
        handed, self.handed = self.handed, []
        written, self.written = self.written, []
        return {"handed": [(a, b, _ids(v)) for a, b, v in handed], "written": [(a, b, _ids(v)) for a, b, v in written],
                "gc": self.gc.take(), "heap": [len(gc.get_objects()), gc.get_freeze_count()]}


def _ids(values: list[bytes | None]) -> list[str]:
    out = []
    for v in values:
        try:
            out.append(str(json.loads(v or b"{}")["event_id"]))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def main(out: Path) -> int:
    proj = TimedProjector(Settings.from_env())
    if "EVENTSTORE_BENCH_KAFKA_COMMIT_SECONDS" in os.environ:  # 0: a Kafka commit after every batch (to compare)
        proj.kafka_commit_every = float(os.environ["EVENTSTORE_BENCH_KAFKA_COMMIT_SECONDS"])
    if os.environ.get("EVENTSTORE_BENCH_PROJECTOR_GC", "tuned") != "default":
        tune_for_batches()  # as `eventstore project` does before it starts its projector
    return serve(proj, out, proj.take)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
