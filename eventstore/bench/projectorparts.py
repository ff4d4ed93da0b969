"""``python -m eventstore.bench.projectorparts``: the projector's per-event parts that the speed round of
docs/perf-projector.md changed, each timed beside the code it replaced, in the same process and minute.

No servers: a batch of signed ``InventoryAdjusted`` intake messages (built as the SDK builds them) is parsed
as the projector parses it; then each part runs over the whole batch, previous way and current way
interleaved, best of several repeats of this process's CPU time (``time.process_time``). The parts: the
signature check (``auth.authenticate`` per envelope vs the batch verifier with the HMAC pads hashed once),
the array parameters of the append (psycopg's list dumping vs prebuilt binary arrays), the outcome
notifications (``JSONEncoder.encode`` per result vs the C encoder built once, rows from the append's id
texts) and the committed-topic message from memory (pydantic_core over the fields vs the texts the chain
hashed). Round 2 adds: the payload's validation (pydantic ``model_validate`` + ``model_dump`` vs the class's
compiled check, core/payloadcheck.py) and the consumer's hand-over (an ``IntakeMessage`` built by its frozen
``__init__`` per confluent_kafka Message vs ``intake.intake_messages``) and the control-character checks
of the envelope's names (the regex vs printable ASCII first). Round 3 adds: the envelope's decode (the
escape scans, the nesting count over the whole value before msgspec vs one memchr for a backslash and the
count over the payload after it) and the signed part's cut (``split_signed``'s regex vs ``split_signed_as``
from the auth member msgspec read). Printed: µs per event each way, the saving and the ratio, each round's
total, and the machine's load.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import confluent_kafka
import msgspec
import psycopg
import pydantic_core
from psycopg.adapt import AdaptersMap, PyFormat, Transformer

from eventstore.bench.intake import messages
from eventstore.core.auth import AgentKey, Credential, authenticate, split_signed, split_signed_as
from eventstore.core.decisions import _Verifier
from eventstore.core.errors import InvalidEventError
from eventstore.core.events import registry
from eventstore.core.hashing import GENESIS, hashed_time
from eventstore.core.limits import check_json_depth, may_hold_surrogates
from eventstore.core.native import compiled_modules
from eventstore.core.outcomes import EmitResult, Outcome
from eventstore.core.records import RecordedEvent, recorded_event
from eventstore.core.validation import CONTROL_CHARS
from eventstore.postgres import binarrays
from eventstore.postgres.intake import parse
from eventstore.postgres.intakebatch import IntakeMessage, Parsed, intake_messages
from eventstore.wire import envelope
from eventstore.wire.committed import PRINTED, encode_recorded
from eventstore.wire.notifications import MAX_PAYLOAD, pack_rows

REPEATS = 7
ROUND_2 = ("payload validation", "consumer messages", "control-character checks")
ROUND_3 = ("envelope decode", "signed part")
_PREVIOUS = json.JSONEncoder(separators=(",", ":"))


def previous_pack(results: list[EmitResult]) -> list[str]:
    """The notification packing before this round (the baseline): JSONEncoder.encode per result."""
    chunks: list[str] = []
    current: list[str] = []
    size = 2
    for r in results:
        item = _PREVIOUS.encode(r.to_wire())
        if len(item.encode()) + 2 > MAX_PAYLOAD:
            r = dataclasses.replace(r, reason=(r.reason or "")[:1000])
            item = _PREVIOUS.encode(r.to_wire())
        if current and size + len(item.encode()) + 1 > MAX_PAYLOAD:
            chunks.append("[" + ",".join(current) + "]")
            current, size = [], 2
        current.append(item)
        size += len(item.encode()) + 1
    if current:
        chunks.append("[" + ",".join(current) + "]")
    return chunks


def previous_decode_intake(value: bytes | None) -> tuple[Any, dict[str, Any]]:
    """``decode_intake`` before round 3 (the baseline): the nesting counted over the whole value before msgspec,
    a substring scan for ``\\u`` for surrogates and again for escaped timestamps."""
    if value is not None and not may_hold_surrogates(value):
        try:
            check_json_depth(value, "the envelope")
            env = envelope._INTAKE.decode(value)
            raw = bytes(env.payload)
            stamp, auth = env.occurred_at, env.auth
            names = f"{env.idempotency_key}{env.stream}{env.agent_id}{env.type}"
            if (raw[:1] == b"{"
                    and ((names.isascii() and names.isprintable()) or not CONTROL_CHARS.search(names))
                    and (auth is None or envelope._AUTH_FORM.match(f"{auth.key_id}:{auth.mac}"))
                    and (stamp is None or (stamp.tzinfo is not None and envelope._SUB_MICROSECONDS.search(value) is None
                                           and envelope._ESCAPE not in value))):
                payload = pydantic_core.from_json(raw)
                if isinstance(payload, dict):
                    return env, payload
        except (msgspec.MsgspecError, InvalidEventError, ValueError):
            pass
    full = envelope.decode(value)
    return full, full.payload


class _Context:
    """What psycopg's Transformer needs of a connection to dump parameters: adapters, no connection."""

    def __init__(self) -> None:
        self.adapters = AdaptersMap(psycopg.adapters)
        self.connection = None
        binarrays.register(self)  # type: ignore[arg-type]


def _best(fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def main(n: int = 2000) -> int:
    credential = Credential(uuid.uuid4().hex[:16], os.urandom(32))
    keys = {credential.key_id: AgentKey(credential.key_id, "bench-intake", credential.secret, "active")}
    parsed = [p for m in messages(credential, n, "parts", seed=7) if isinstance(p := parse(m, registry), Parsed)]
    if len(parsed) != n:
        raise RuntimeError("the batch did not parse")
    envs = [p.envelope for p in parsed]
    now = datetime.now(UTC)
    recorded: list[RecordedEvent] = [recorded_event(
        i + 1, e.event_id, e.stream, i + 1, e.type, e.schema_version, p.payload, e.agent_id, e.idempotency_key,
        e.correlation_id, e.causation_id, e.occurred_at, now, None, None, GENESIS, GENESIS)
        for i, (p, e) in enumerate(zip(parsed, envs, strict=True))]
    texts = [str(e.event_id) for e in envs]
    held = [dataclasses.replace(ev) for ev in recorded]
    for ev, p, text in zip(held, parsed, texts, strict=True):
        ev.__dict__[PRINTED] = (text, text, "", hashed_time(ev.occurred_at), hashed_time(now), p.payload_json)
    results = [EmitResult(e.event_id, Outcome.COMMITTED, e.stream, i + 1, i + 1, i + 1) for i, e in enumerate(envs)]
    rows = [[t, "committed", e.stream, i + 1, i + 1, i + 1, None, None] for i, (t, e) in enumerate(zip(texts, envs,
                                                                                                        strict=True))]
    if previous_pack(results) != pack_rows(rows):
        raise RuntimeError("the notification payloads differ from the previous ones")
    columns: list[list[Any]] = [
        [i for i in range(n)], [e.stream for e in envs], [i for i in range(n)], [e.type for e in envs],
        [e.schema_version for e in envs], [p.payload_json for p in parsed], [e.agent_id for e in envs],
        [e.idempotency_key for e in envs], [None] * n, [None] * n, [p.intent for p in parsed],
        [GENESIS] * n, [GENESIS] * n]
    builders: list[Callable[[Any], Any]] = [
                binarrays.int8_array, binarrays.text_array, binarrays.int8_array, binarrays.text_array,
                binarrays.int4_array, binarrays.text_array, binarrays.text_array, binarrays.text_array,
                binarrays.text_array, binarrays.int8_array, binarrays.bytea_array, binarrays.bytea_array,
                binarrays.bytea_array]
    tx = Transformer(_Context())
    formats = [PyFormat.BINARY] * len(columns)
    verifier_keys: Any = keys

    def sig_before() -> None:
        for p in parsed:
            authenticate(p.envelope.agent_id, p.signed, keys)

    def sig_after() -> None:
        v = _Verifier(verifier_keys)
        for p in parsed:
            v.valid(p.envelope.agent_id, p.signed)

    payloads = [(p.envelope.type, p.envelope.schema_version, dict(p.payload)) for p in parsed]

    def payload_before() -> None:
        for t, v, d in payloads:
            registry.decode(t, v, d).model_dump(mode="json")

    def payload_after() -> None:
        for t, v, d in payloads:
            registry.decode_payload(t, v, d)

    if [registry.decode_payload(t, v, d)[1] for t, v, d in payloads] != [p.payload for p in parsed]:
        raise RuntimeError("the compiled payload check gives other payloads than pydantic")
    consumed = [confluent_kafka.Message(topic="intake", partition=0, offset=i, key=m.key, value=m.value)
                for i, m in enumerate(p.message for p in parsed)]

    def consumer_before() -> list[IntakeMessage]:
        out = []
        for m in consumed:
            if m.error() is None:
                out.append(IntakeMessage(int(m.partition() or 0), int(m.offset() or 0), m.key(), m.value()))
        return out

    if consumer_before() != intake_messages(consumed):
        raise RuntimeError("intake_messages gives other messages than the constructor")

    names = [(f"{e.idempotency_key}{e.stream}{e.agent_id}{e.type}", e.stream) for e in envs]

    def names_before() -> None:  # the envelope's four names, then the stream again (check_name)
        for joined, stream in names:
            CONTROL_CHARS.search(joined)
            CONTROL_CHARS.search(stream)

    def names_after() -> None:  # printable ASCII skips the regex
        for joined, stream in names:
            _ = (joined.isascii() and joined.isprintable()) or CONTROL_CHARS.search(joined)
            _ = (stream.isascii() and stream.isprintable()) or CONTROL_CHARS.search(stream)

    values = [p.message.value for p in parsed]
    auths = [(p.message.value or b"", e.auth.key_id, e.auth.mac) for p, e in zip(parsed, envs, strict=True)
             if isinstance(e, envelope.IntakeEnvelope) and e.auth is not None]
    if len(auths) != n or [split_signed_as(*a) for a in auths] != [split_signed(v) for v in values]:
        raise RuntimeError("split_signed_as cuts another signed part than split_signed")
    if [previous_decode_intake(v)[1] for v in values] != [envelope.decode_intake(v)[1] for v in values]:
        raise RuntimeError("decode_intake gives other payloads than before")

    parts: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
        ("signature check (HMAC) per envelope", sig_before, sig_after),
        ("append's 13 array parameters", lambda: tx.dump_sequence(columns, formats),
         lambda: tx.dump_sequence([b(c) for b, c in zip(builders, columns, strict=True)], formats)),
        ("outcome notification payloads", lambda: previous_pack(results), lambda: pack_rows(rows)),
        ("committed message from memory", lambda: [encode_recorded(ev) for ev in recorded],
         lambda: [encode_recorded(ev) for ev in held]),
        ("payload validation", payload_before, payload_after),
        ("consumer messages", consumer_before, lambda: intake_messages(consumed)),
        ("control-character checks", names_before, names_after),
        ("envelope decode", lambda: [previous_decode_intake(v) for v in values],
         lambda: [envelope.decode_intake(v) for v in values]),
        ("signed part", lambda: [split_signed(v) for v in values], lambda: [split_signed_as(*a) for a in auths]),
    ]
    print(f"eventstore projector parts: a batch of {n:,} signed InventoryAdjusted envelopes, each part previous "
          f"vs current, interleaved, best of {REPEATS} (process CPU)")
    compiled = [name.rsplit(".", 1)[1] for name, on in compiled_modules().items() if on]
    print(f"  machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}; "
          f"compiled with mypyc: {', '.join(compiled) or 'none'}; load average {os.getloadavg()[0]:.2f}")
    total_before = total_after = round2_before = round2_after = round3_before = round3_after = 0.0
    for name, before, after in parts:
        b = a = float("inf")
        for _ in range(3):
            b, a = min(b, _best(before)), min(a, _best(after))
        b, a = b / n * 1e6, a / n * 1e6
        total_before, total_after = total_before + b, total_after + a
        if name in ROUND_2:
            round2_before, round2_after = round2_before + b, round2_after + a
        if name in ROUND_3:
            round3_before, round3_after = round3_before + b, round3_after + a
        print(f"  {name:38s} previous {b:6.2f} us/event, now {a:6.2f} us/event: saves {b - a:5.2f} us ({a / b:.2f}x)")
    print(f"  {'round 2 parts together':38s} previous {round2_before:6.2f} us/event, now {round2_after:6.2f} "
          f"us/event: saves {round2_before - round2_after:5.2f} us ({round2_after / round2_before:.2f}x)")
    print(f"  {'round 3 parts together':38s} previous {round3_before:6.2f} us/event, now {round3_after:6.2f} "
          f"us/event: saves {round3_before - round3_after:5.2f} us ({round3_after / round3_before:.2f}x)")
    print(f"  {'together':38s} previous {total_before:6.2f} us/event, now {total_after:6.2f} us/event: saves "
          f"{total_before - total_after:5.2f} us ({total_after / total_before:.2f}x); load average now "
          f"{os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
