"""Chain-check benchmark: what a subscriber pays per committed message to check it against the chain
(recompute the event's hash from its fields and payload), next to the decoding it does anyway,
measured in the same run. CPU only: the one log lookup per polled batch is not included.

Run: ``eventstore bench chain-check [--events N]`` (no servers needed).
"""

from __future__ import annotations

import os
import platform
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from eventstore.core.hashing import GENESIS, recorded_hash
from eventstore.core.records import RecordedEvent
from eventstore.wire.committed import decode_committed, encode_committed

REPEATS = 5


def _sample(payload: dict[str, Any]) -> bytes:
    eid = uuid.uuid4()
    ev = RecordedEvent(position=1, event_id=eid, stream="inventory-r-0001", version=1, type="InventoryAdjusted",
                       schema_version=1, payload=payload, agent_id="bench", idempotency_key=f"bench:{eid}",
                       correlation_id=eid, causation_id=None, occurred_at=None, recorded_at=datetime.now(UTC),
                       prev_hash=GENESIS)
    _key, value, _headers = encode_committed(replace(ev, hash=recorded_hash(ev, GENESIS)))
    return value


def _best(fn: Callable[[], object], n: int) -> float:
    """Best of REPEATS runs, in µs per call (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def main(events: int = 100_000) -> int:
    print("Conditions")
    print(f"  machine : nproc {len(os.sched_getaffinity(0))}, {platform.platform()}, Python "
          f"{platform.python_version()}; load average {os.getloadavg()[0]:.2f}")
    print(f"  method  : best of {REPEATS} runs of {events:,} calls each, one thread")
    samples: list[tuple[str, dict[str, Any]]] = [
        ("small payload (2 fields)", {"sku": "r-0001", "delta": -3}),
        ("nested payload (20 items)", {"items": [{"sku": f"s-{i:04d}", "q": i, "w": i / 3} for i in range(20)]}),
    ]
    for name, payload in samples:
        value = _sample(payload)
        decoded = decode_committed(value)
        decode = _best(lambda: decode_committed(value), events)  # noqa: B023 (called before the next loop)
        check = _best(lambda: recorded_hash(decoded, GENESIS), events)  # noqa: B023
        print(f"{name} ({len(value)} bytes a message)")
        print(f"  baseline: decode                  {decode:7.2f} µs/event  ({1e6 / decode:10,.0f} events/s)")
        print(f"  check   : recompute the hash      {check:7.2f} µs/event")
        print(f"  decode + check                    {decode + check:7.2f} µs/event  ({1e6 / (decode + check):10,.0f}"
              f" events/s), {(decode + check) / decode:.2f}x the baseline")
    return 0
