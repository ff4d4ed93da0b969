"""Benchmark (not a test): what the per-message boundary and the limits of issue 8 cost per intake
message. Baseline, measured in the same run: the checks a message had before (decode, event class,
canonical JSON, intent hash). Run: ``python -m eventstore.bench.parsing``."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable

from eventstore.core.events import registry
from eventstore.core.hashing import canonical_json, intent_hash
from eventstore.core.validation import check_no_nul, check_stream
from eventstore.examples.inventory import InventoryUpdated, stream_for
from eventstore.postgres.intake import read_message
from eventstore.postgres.intakebatch import IntakeMessage, Parsed
from eventstore.sdk.client import build_envelope
from eventstore.wire.envelope import decode, encode


def _baseline(m: IntakeMessage) -> Parsed:
    env = decode(m.value)
    check_stream(env.stream)
    typed = registry.decode(env.type, env.schema_version, env.payload)
    payload = typed.model_dump(mode="json")
    check_no_nul(env.type, payload)
    pj = canonical_json(payload)
    return Parsed(env, intent_hash(env.type, env.schema_version, env.stream, pj), message=m, payload_json=pj,
                   payload=payload)


def _run(messages: list[IntakeMessage], f: Callable[[IntakeMessage], object]) -> float:
    t = time.perf_counter()
    for m in messages:
        f(m)
    return (time.perf_counter() - t) / len(messages) * 1e6


def main(count: int = 2000, rounds: int = 20) -> None:
    messages = []
    for i in range(count):
        env = build_envelope("bench", InventoryUpdated(sku=f"S{i}", quantity=i), stream_for(f"S{i}"),
                             expected_version=None, idempotency_key=None, correlation_id=None,
                             causation_id=None, lease=None)
        key, value, _ = encode(env)
        messages.append(IntakeMessage(0, i, key, value))
    base = best = float("inf")
    gc.disable()
    try:
        for _ in range(rounds):  # interleaved, so a change in load hits both alike
            base = min(base, _run(messages, _baseline))
            best = min(best, _run(messages, lambda m: read_message(m, registry)))
    finally:
        gc.enable()
    print(f"conditions: {count} InventoryUpdated envelopes of ~{len(messages[0].value or b'')} bytes, best of "
          f"{rounds} interleaved rounds, gc off, load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs")
    print(f"baseline (checks before issue 8): {base:.1f} us/message")
    print(f"read_message (boundary + limits):  {best:.1f} us/message  ratio {best / base:.2f}")


if __name__ == "__main__":
    main()
