"""The mypyc-compiled modules against their own Python source, in one run: ``eventstore bench native``.

Loads each module of ``NATIVE_MODULES`` twice: as this install imports it (the C extension when the build
compiled it) and from its ``.py`` source beside it, executed as plain Python with the other pure copies
standing in for its compiled neighbours (so a pure ``committed`` calls a pure ``hashing``). Then it times
the per-event work each module does on the hot paths, both ways interleaved over the same inputs, best of
several repeats of this process's CPU time, and prints µs per event each way and the ratio. No servers:
the append runs against an in-memory cursor (its statements are not executed), the subscriber's batch step
against the in-memory log of ``bench rebuild-cpu``. The source is the same, so a ratio far from 1 is the
interpreter's share of that part.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import platform
import sys
import time
import types
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from consumers import subscriber
from consumers.views import LocalView
from eventstore.bench.intake import messages as intake_messages
from eventstore.bench.projectorparts import _Context
from eventstore.bench.rebuildcpu import _Log, _Offline
from eventstore.bench.rebuildcpu import messages as committed_messages
from eventstore.core.auth import Credential
from eventstore.core.events import registry
from eventstore.core.gcpolicy import BATCH_THRESHOLDS, tune_for_batches
from eventstore.core.hashing import GENESIS
from eventstore.core.native import NATIVE_MODULES, compiled_modules
from eventstore.core.records import RecordedEvent
from eventstore.examples.inventory import quantity_reducer
from eventstore.postgres.intake import parse
from eventstore.postgres.intakebatch import Parsed

REPEATS = 7
BATCH = 1000


def pure_modules() -> dict[str, types.ModuleType]:
    """A pure-Python copy of each module of ``NATIVE_MODULES``, executed from the ``.py`` beside the module
    this install imports, with ``sys.modules`` pointing at the pure copies meanwhile (restored after)."""
    pure: dict[str, types.ModuleType] = {}
    saved: dict[str, types.ModuleType | None] = {name: sys.modules.get(name) for name in NATIVE_MODULES}
    try:
        for name in NATIVE_MODULES:  # in build order: each module's imports among them are already pure
            spec = importlib.util.find_spec(name)
            if spec is None or spec.origin is None:
                raise RuntimeError(f"{name} is not importable: is the package installed?")
            source = Path(spec.origin).parent / (name.rsplit(".", 1)[1] + ".py")
            if not source.exists():
                raise RuntimeError(f"{source} is missing: the benchmark needs the source beside the build")
            pure_spec = importlib.util.spec_from_file_location(name, source)
            if pure_spec is None or pure_spec.loader is None:
                raise RuntimeError(f"cannot load {source}")
            module = importlib.util.module_from_spec(pure_spec)
            sys.modules[name] = module
            pure_spec.loader.exec_module(module)
            pure[name] = module
    finally:
        for name, before in saved.items():
            if before is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = before
    return pure


class _Cursor:
    """What ``append_columns`` needs of a cursor: psycopg's adapters, and the log head it reads (no SQL runs)."""

    def __init__(self) -> None:
        self.adapters = _Context().adapters
        self.connection = None

    def execute(self, _query: Any, _params: Any = None) -> None:
        return None

    def fetchone(self) -> tuple[int, bytes, datetime]:
        return 0, GENESIS, datetime.now(UTC)


@contextmanager
def _subscriber_using(committed: types.ModuleType) -> Iterator[None]:
    """The subscriber module's decoder names bound to ``committed``'s for the duration (restored after)."""
    names = ("decode_batch", "reference_linked", "PayloadOmitted")
    saved = {name: getattr(subscriber, name) for name in names}
    try:
        for name in names:
            setattr(subscriber, name, getattr(committed, name))
        yield
    finally:
        for name, value in saved.items():
            setattr(subscriber, name, value)


def _columns(eventlog: types.ModuleType, parsed: Sequence[Parsed]) -> Any:
    """The ``Columns`` of a batch of parsed envelopes, versions 1.., as the projector's batch fills them."""
    c = eventlog.Columns()
    for i, p in enumerate(parsed):
        e = p.envelope
        c.add(e.event_id, e.stream, i + 1, e.type, e.schema_version, p.payload_json, p.payload, e.agent_id,
              e.idempotency_key, e.correlation_id, e.causation_id, e.occurred_at, None, None, p.intent)
    return c


def _best(fn: Callable[[], object], n: int) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best / n * 1e6


def _parts(mods: dict[str, types.ModuleType], parsed: Sequence[Parsed], held: Sequence[RecordedEvent],
           rows: Sequence[tuple[Any, ...]], values: Sequence[bytes], hashes: dict[int, bytes],
           ) -> list[tuple[str, Callable[[], object]]]:
    """The timed parts, each over its whole input, calling into ``mods`` (the compiled or the pure set)."""
    hashing, committed, eventlog = (mods["eventstore.core.hashing"], mods["eventstore.wire.committed"],
                                    mods["eventstore.postgres.eventlog"])
    cursor = _Cursor()
    batches = [values[i:i + BATCH] for i in range(0, len(values), BATCH)]

    def append() -> None:
        eventlog.append_columns(cursor, _columns(eventlog, parsed))

    def take() -> None:
        view = LocalView(quantity_reducer)
        sub = _Offline(_Log(hashes), view)
        with _subscriber_using(committed):
            for batch in batches:
                sub._take(batch)
        if view.position != len(values) or sub.forgeries:
            raise RuntimeError(f"the rebuild reached {view.position} with {sub.forgeries} forgeries")

    def each(fn: Callable[[Any], object], items: Sequence[Any]) -> Callable[[], None]:
        def run() -> None:  # results dropped as made, as the publisher and the subscriber drop them
            for item in items:
                fn(item)
        return run

    def chain(ev: RecordedEvent) -> bytes:
        result: bytes = hashing.recorded_hash(ev, GENESIS)
        return result

    return [
        ("projector: Columns + append_columns (no SQL)", append),
        ("publisher: encode_recorded (from memory)", each(committed.encode_recorded, held)),
        ("publisher: encode_row (from the log)", each(committed.encode_row, rows)),
        ("subscriber: decode_batch", each(committed.decode_batch, batches)),
        ("subscriber: batch step (_take + LocalView)", take),
        ("reference check: recorded_hash", each(chain, held)),
    ]


def main(n: int = 20_000) -> int:
    """Time each compiled part against its own source over ``n`` events and print the ratios; RuntimeError
    when the two give different results or the decoder's fast path refuses an honest message."""
    compiled = compiled_modules()
    credential = Credential(uuid.uuid4().hex[:16], os.urandom(32))
    parsed = [p for m in intake_messages(credential, n, "native", seed=7)
              if isinstance(p := parse(m, registry), Parsed)]
    if len(parsed) != n:
        raise RuntimeError("the intake batch did not parse")
    import eventstore.core.hashing as hashing_mod
    import eventstore.postgres.eventlog as eventlog_mod
    import eventstore.wire.committed as committed_mod

    native = {"eventstore.core.hashing": hashing_mod, "eventstore.wire.committed": committed_mod,
              "eventstore.postgres.eventlog": eventlog_mod}
    pure = pure_modules()
    cursor: Any = _Cursor()
    held = eventlog_mod.append_columns(cursor, _columns(eventlog_mod, parsed))  # with the printed texts: a hand-off
    values, hashes = committed_messages(n)
    rows = [_row(ev) for ev in held]
    # The same results both ways, before anything is timed.
    for name, fn in (("encode_recorded", lambda m: [m.encode_recorded(ev) for ev in held[:500]]),
                     ("encode_row", lambda m: [m.encode_row(r) for r in rows[:500]]),
                     ("decode_batch", lambda m: m.decode_batch(values[:500])[1])):
        if fn(committed_mod) != fn(pure["eventstore.wire.committed"]):
            raise RuntimeError(f"{name}: the compiled module and its source give different results")
    if committed_mod.decode_batch(values[:10])[0][0] is None:
        raise RuntimeError("the decoder's fast path refused an honest message: the build is broken")
    shown = ", ".join(f"{m.rsplit('.', 1)[1]} {'compiled' if on else 'PURE (not compiled here)'}"
                      for m, on in compiled.items())
    print(f"eventstore native benchmark: each part over {n:,} events, this install's module vs its .py source "
          f"run as Python, interleaved, best of {REPEATS} (process CPU)")
    print(f"  machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}; "
          f"modules: {shown}; collector tuned for batches as `eventstore project` and `follow` tune it "
          f"(frozen after set-up, thresholds {BATCH_THRESHOLDS}); load average {os.getloadavg()[0]:.2f}", flush=True)
    thresholds = gc.get_threshold()
    tune_for_batches()
    try:
        natives, pures = _parts(native, parsed, held, rows, values, hashes), _parts(pure, parsed, held, rows,
                                                                                      values, hashes)
        for (name, fast), (_, slow) in zip(natives, pures, strict=True):
            a = b = float("inf")
            for _ in range(2):
                b, a = min(b, _best(slow, n)), min(a, _best(fast, n))
            print(f"  {name:44s} source {b:6.2f} us/event, this install {a:6.2f} us/event: {a / b:.2f}x", flush=True)
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    print(f"  load average after the run {os.getloadavg()[0]:.2f}")
    return 0


def _row(ev: RecordedEvent) -> tuple[Any, ...]:
    """The publisher's text row of an event (``COMMITTED_ROW``'s forms), as ``encode_row`` takes it."""
    def stamp(t: datetime | None) -> str | None:
        return None if t is None else t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    import json

    return (ev.position, str(ev.event_id), ev.stream, ev.version, ev.type, ev.schema_version, json.dumps(ev.payload),
            ev.agent_id, ev.idempotency_key, str(ev.correlation_id),
            None if ev.causation_id is None else str(ev.causation_id), stamp(ev.occurred_at), stamp(ev.recorded_at),
            ev.lease_resource, ev.fencing_token, None if ev.prev_hash is None else ev.prev_hash.hex(),
            None if ev.hash is None else ev.hash.hex())


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000))
