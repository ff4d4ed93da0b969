"""The subscriber's own CPU per rebuilt event, without servers: ``python -m eventstore.bench.rebuildcpu [N]``.

``eventstore bench subscribers`` measures a rebuild from Kafka with the servers, where librdkafka's threads,
the broker and the load of a shared machine move the figure by ±20 % between runs. This runs the
subscriber's batch step (``Subscriber._take``: decode, chain check, one log lookup per run, stream-gap
check, the view's fold) over N committed messages as this tree's publisher writes them from the log, in
batches of 1,000, with the log's hash lookup answered from memory (the run's last hash is the log's: an
honest topic). It prints CPU µs per event with the process's default collector and tuned for batches,
beside the decoder alone (``decode_batch`` or, in an older tree, ``decode_linked``) and the reference
decoder (``decode_committed`` + ``recorded_hash``) over the same messages in the same run.
"""

from __future__ import annotations

import gc
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from consumers.subscriber import Subscriber
from consumers.views import LocalView
from eventstore.core.hashing import GENESIS, recorded_hash
from eventstore.core.records import RecordedEvent
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryAdjusted, quantity_reducer, stream_for
from eventstore.wire import committed
from eventstore.wire.committed import decode_committed, decode_linked, encode_row

TYPE = InventoryAdjusted.event_type
SKUS = 1000
BATCH = 1000


def messages(n: int) -> tuple[list[bytes], dict[int, bytes]]:
    """n committed messages of InventoryAdjusted over SKUS streams, one recorded_at per 1,000 (a projector
    batch), encoded by ``encode_row`` from the log's text form; and the log's hash at each batch's end."""
    rnd = random.Random(n)
    prev, versions, values, hashes = GENESIS, dict[str, int](), [], {}
    recorded = datetime.now(UTC)
    for position in range(1, n + 1):
        if position % BATCH == 1:
            recorded = datetime.now(UTC)
        eid = uuid.uuid4()
        sku = f"r-{rnd.randrange(SKUS):04d}"
        stream = stream_for(sku)
        versions[stream] = version = versions.get(stream, 0) + 1
        ev = RecordedEvent(position=position, event_id=eid, stream=stream, version=version, type=TYPE,
                           schema_version=1, payload={"sku": sku, "delta": rnd.randint(-5, 9)}, agent_id="bench",
                           idempotency_key=f"bench:{eid}", correlation_id=eid, causation_id=None,
                           occurred_at=None, recorded_at=recorded)
        link = recorded_hash(ev, prev)
        row = (position, str(eid), stream, version, TYPE, 1, json.dumps(ev.payload), "bench", ev.idempotency_key,
               str(eid), None, None, recorded.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), None, None, prev.hex(), link.hex())
        values.append(encode_row(row)[2])
        hashes[position] = link
        prev = link
    return values, hashes


class _Log:
    """A cursor whose only query is the log's hash at a position (eventlog.hash_at), answered from memory."""

    def __init__(self, hashes: dict[int, bytes]) -> None:
        self.hashes = hashes
        self.row: tuple[bytes] | None = None

    def __enter__(self) -> _Log:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def cursor(self) -> _Log:
        return self

    def execute(self, _query: Any, params: tuple[int]) -> None:
        found = self.hashes.get(params[0])
        self.row = None if found is None else (found,)

    def fetchone(self) -> tuple[bytes] | None:
        return self.row


class _Offline(Subscriber):
    """A Subscriber whose log connection is the in-memory :class:`_Log` (never started: only ``_take`` runs)."""

    def __init__(self, log: _Log, view: LocalView) -> None:
        settings = Settings.from_env().with_servers("postgresql://bench@127.0.0.1:9/bench", "127.0.0.1:9")
        super().__init__("rebuildcpu", view=view, settings=settings, from_beginning=True)
        self._log = log

    def _conn(self) -> Any:
        return self._log


def _build() -> str:
    """Whether this install runs the decoder's module compiled (mypyc, docs/perf-native.md) or as Python."""
    try:
        from eventstore.core.native import is_compiled
    except ImportError:  # an older tree, before the mypyc build
        return "pure Python"
    return "compiled with mypyc" if is_compiled("eventstore.wire.committed") else "pure Python"


def _cpu(fn: Callable[[], object], n: int) -> float:
    c0 = time.process_time()
    fn()
    return (time.process_time() - c0) / n * 1e6


def main(n: int = 100_000, rounds: int = 3) -> int:
    values, hashes = messages(n)
    batches: list[Sequence[bytes]] = [values[i:i + BATCH] for i in range(0, n, BATCH)]
    decoder = getattr(committed, "decode_batch", None)
    print(f"eventstore rebuild CPU benchmark: {n:,} committed messages ({len(values[0])} bytes each), "
          f"{SKUS} streams, batches of {BATCH}, LocalView(quantity_reducer); Python {sys.version.split()[0]}; "
          f"decoder {'decode_batch' if decoder else 'decode_linked'} ({_build()}); "
          f"load average {os.getloadavg()[0]:.2f}",
          flush=True)

    def take() -> None:
        view = LocalView(quantity_reducer)
        sub = _Offline(_Log(hashes), view)
        for batch in batches:
            sub._take(batch)
        if view.position != n or sub.applied != n or sub.forgeries:
            raise RuntimeError(f"the rebuild reached {view.position} with {sub.forgeries} forgeries, not {n}")

    def decode() -> None:
        for batch in batches:
            if decoder is not None:
                decoder(batch)
            else:
                [decode_linked(v) for v in batch]

    def reference() -> None:
        for batch in batches:
            for v in batch:
                ev = decode_committed(v)
                recorded_hash(ev, ev.prev_hash or GENESIS)

    thresholds = gc.get_threshold()
    best: dict[str, float] = {}
    for _ in range(rounds):  # alternated, best of each
        for name, fn, tuned in (("subscriber step, default collector", take, False),
                                ("subscriber step, collector tuned for batches", take, True),
                                ("decoder alone (tuned)", decode, True),
                                ("reference decoder (tuned)", reference, True)):
            if tuned:
                gc.collect()
                gc.freeze()
                gc.set_threshold(50_000, 20, 10)
            try:
                best[name] = min(best.get(name, float("inf")), _cpu(fn, n))
            finally:
                gc.unfreeze()
                gc.set_threshold(*thresholds)
    ref = best["reference decoder (tuned)"]
    for name, us in best.items():
        print(f"  {name:<46}: {us:6.2f} µs CPU per event  ({us / ref:4.2f}x the reference decoder)")
    print(f"  load average after the run {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
