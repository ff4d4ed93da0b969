"""The agent's emit path without servers: the writer's bytes are the Envelope model's bytes, the fast
signer's MAC is HMAC-SHA256's, wire codes map to their members, and the pending-outcome table resolves
every handle exactly once, also with emitters and a settler running concurrently."""

from __future__ import annotations

import hmac
import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from eventstore.core.auth import AgentKey, Credential, Signer, authenticate, sign, split_signed
from eventstore.core.errors import ClientClosedError, EmitTimeout
from eventstore.core.ids import new_event_id
from eventstore.core.outcomes import EmitResult, Outcome, ReasonCode, outcome_of, reason_of
from eventstore.core.records import Envelope, LeaseRef
from eventstore.sdk.listener import named_ids
from eventstore.sdk.pending import EmitHandle, PendingOutcomes
from eventstore.wire.envelope import FORMAT, EnvelopeWriter, decode, encode
from eventstore.wire.notifications import pack

ODD_NAMES = ["inventory-A1", 'quote"d', "back\\slash", "ünïcödé-流", "emoji-🙂", "x" * 200, "tab-less/slash"]
PAYLOADS: list[dict[str, Any]] = [
    {"sku": "A1", "delta": -3},
    {"f": 0.1, "big": 2**62, "neg": -1.5e-300, "nested": {"l": [1, "two", None, True, {"k": []}]}},
    {"text": 'quote " and \\ and \u2028 and 🙂', "empty": "", "zero": 0.0},
    {"inf": float("inf"), "nan": float("nan")},  # written as null, as the model writes them
]


def _model_bytes(env: Envelope, credential: Credential | None) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """What the SDK wrote before the writer: the Envelope model's JSON, signed, and its headers."""
    value = env.model_dump_json(exclude_none=False, exclude={"auth"}).encode()
    headers = [("es-format", FORMAT.encode()), ("es-type", env.type.encode()),
               ("es-schema-version", str(env.schema_version).encode()), ("es-agent", env.agent_id.encode()),
               ("es-event-id", str(env.event_id).encode())]
    return env.stream.encode(), sign(value, credential) if credential else value, headers


def _envelopes(n: int) -> list[Envelope]:
    rnd = random.Random(11)
    out = []
    for i in range(n):
        eid = uuid.uuid4()
        tz = rnd.choice([UTC, timezone(timedelta(hours=2, minutes=30)), timezone(timedelta(hours=-7))])
        when = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=rnd.randrange(10**14))
        out.append(Envelope.model_construct(
            event_id=eid, idempotency_key=rnd.choice([str(eid), *ODD_NAMES]), stream=rnd.choice(ODD_NAMES),
            expected_version=rnd.choice([None, 0, 7, 2**63 - 1]), agent_id=rnd.choice(["agent-1", *ODD_NAMES]),
            correlation_id=rnd.choice([eid, uuid.uuid4()]), causation_id=rnd.choice([None, uuid.uuid4()]),
            occurred_at=rnd.choice([None, when.astimezone(tz), when.replace(microsecond=0)]),
            type=rnd.choice(["InventoryAdjusted", "Odd\"Type"]), schema_version=rnd.choice([1, 2**31 - 1]),
            payload=PAYLOADS[i % len(PAYLOADS)],
            lease=rnd.choice([None, LeaseRef(resource="inventory:A1", token=3),
                              LeaseRef(resource='r"\\ü', token=2**63 - 1)])))
    return out


def test_the_writer_writes_the_models_bytes_signed_or_not() -> None:
    cred = Credential.new()
    for env in _envelopes(400):
        for credential in (cred, None):
            assert EnvelopeWriter(env.agent_id, credential).encode(env) == _model_bytes(env, credential)
            assert encode(env, credential) == _model_bytes(env, credential)


def test_the_writers_plain_fields_give_the_same_message_as_its_envelope() -> None:
    cred = Credential.new()
    writer = EnvelopeWriter("agent-1", cred)
    for env in _envelopes(100):
        if env.agent_id != "agent-1":
            continue
        direct = writer.write(str(env.event_id), env.idempotency_key, env.stream, env.expected_version,
                              str(env.correlation_id), env.causation_id, env.occurred_at, env.type,
                              env.schema_version, env.payload, env.lease)
        assert direct == writer.encode(env)
        assert decode(direct[1]).event_id == env.event_id


def test_an_envelope_of_another_agent_is_written_under_its_own_id() -> None:
    cred = Credential.new()
    env = _envelopes(1)[0].model_copy(update={"agent_id": "someone-else"})
    _, value, headers = EnvelopeWriter("agent-1", cred).encode(env)
    assert decode(value).agent_id == "someone-else" and ("es-agent", b"someone-else") in headers
    keys = {cred.key_id: AgentKey(cred.key_id, "agent-1", cred.secret, "active")}
    refusal = authenticate("someone-else", split_signed(value), keys)
    assert refusal is not None and refusal[0] is ReasonCode.BAD_SIGNATURE  # still the projector's call


def test_the_signer_is_hmac_sha256_and_the_projector_accepts_it() -> None:
    rnd = random.Random(5)
    for size in (3, 63, 64, 65, 500, 5000):
        cred = Credential.new()
        value = b'{"a":"' + bytes(rnd.randrange(97, 123) for _ in range(max(0, size - 8))) + b'"}'
        signed = Signer(cred).sign(value)
        assert signed == sign(value, cred)
        assert Signer(cred).mac(value) == hmac.digest(cred.secret, value, "sha256")
        keys = {cred.key_id: AgentKey(cred.key_id, "a", cred.secret, "active")}
        assert authenticate("a", split_signed(signed), keys) is None
        tampered = signed.replace(b'"a":', b'"b":')
        assert authenticate("a", split_signed(tampered), keys) == (
            ReasonCode.BAD_SIGNATURE, f"the signature does not match credential {cred.key_id}")
    long_key = Credential("0123456789abcdef", bytes(range(100)))  # RFC 2104: a key over a block is hashed
    assert Signer(long_key).mac(b"{}") == hmac.digest(long_key.secret, b"{}", "sha256")
    with pytest.raises(ValueError, match="JSON object"):
        Signer(Credential.new()).sign(b"[1] ")


def test_wire_codes_map_to_their_members_and_nothing_else() -> None:
    for o in Outcome:
        assert outcome_of(o.value) is o and outcome_of(o) is o
    for c in ReasonCode:
        assert reason_of(c.value) is c
    for bad in ("COMMITTED", "", None, 1, ["committed"]):
        with pytest.raises(ValueError):
            outcome_of(bad)
        with pytest.raises(ValueError):
            reason_of(bad)
    r = EmitResult(uuid.uuid4(), Outcome.CONFLICT, "s", None, None, 4, "stale", ReasonCode.VERSION_CONFLICT)
    assert EmitResult.from_wire(r.to_wire()) == r


def test_notifications_name_ids_and_anything_else_names_nothing() -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    payload = pack([EmitResult(i, Outcome.COMMITTED, "s", 1, 1) for i in ids])[0]
    assert named_ids(payload) == [str(i) for i in ids]
    for forged in ("not json", "{}", '{"a": 1}', "[1, 2]", "[[]]", "null", '"x"', "[{}]", "[[1]]", '["ab"]'):
        assert named_ids(forged) == []
    assert named_ids('[["not-a-uuid"]]') == ["not-a-uuid"]  # names nothing this client waits for


def _handles(table: PendingOutcomes, n: int) -> list[EmitHandle]:
    return [EmitHandle(uuid.uuid4(), "s", f"k{i}", table) for i in range(n)]


def test_a_handle_resolves_once_whether_or_not_someone_waits() -> None:
    table = PendingOutcomes()
    early, late, failed = _handles(table, 3)
    table.add_many([early, late, failed])
    fut_early = early.future  # asked before the outcome: completed by the settler
    table.settle([EmitResult(early.event_id, Outcome.COMMITTED, "s", 1, 1),
                  EmitResult(late.event_id, Outcome.CONFLICT, "s", current_version=3),
                  EmitResult(uuid.uuid4(), Outcome.COMMITTED, "s", 1, 2)])  # nobody waits for this one
    assert fut_early.result(0).status is Outcome.COMMITTED and early.result(0).version == 1
    assert late.done() and late.future.result(0).current_version == 3  # made after: complete at once
    table.fail(failed.event_id, RuntimeError("broker said no"))
    with pytest.raises(RuntimeError, match="broker said no"):
        failed.result(0)
    assert len(table) == 0
    table.settle([EmitResult(early.event_id, Outcome.DUPLICATE, "s", 1, 1)])  # a second outcome changes nothing
    assert early.result(0).status is Outcome.COMMITTED


def test_a_handle_times_out_and_is_forgotten_and_close_fails_the_rest() -> None:
    table = PendingOutcomes()
    waiting, other = _handles(table, 2)
    table.add(waiting)
    table.add(other)
    with pytest.raises(EmitTimeout, match="idempotency_key='k0'"):
        waiting.result(0.05)
    assert len(table) == 1
    table.close()
    with pytest.raises(ClientClosedError):
        other.result(1)


def test_the_table_is_bounded_and_lets_the_oldest_go() -> None:
    table = PendingOutcomes(max_pending=3)
    hs = _handles(table, 5)
    for h in hs[:2]:
        table.add(h)
    table.add_many(hs[2:])
    assert len(table) == 3
    for h in hs[:2]:
        with pytest.raises(EmitTimeout, match="more than 3 outcomes pending"):
            h.result(0)
    assert not any(h.done() for h in hs[2:])


def test_stale_handles_come_oldest_first_and_a_recheck_moves_them_to_the_end() -> None:
    table = PendingOutcomes()
    hs = _handles(table, 5)
    table.add_many(hs)
    for h in hs:
        h._since -= 10  # added ten seconds ago
    cutoff = time.monotonic() - 5
    ids = [str(h.event_id) for h in hs]  # the table speaks the ids' canonical text
    assert table.stale(cutoff, 3) == ids[:3]
    table.recheck_later(ids[:2])
    assert table.stale(cutoff, 10) == ids[2:]  # the re-checked are fresh again
    assert table.oldest(2) == ids[2:4]
    assert table.waiting([ids[4], str(uuid.uuid4())]) == [ids[4]]


def test_callbacks_run_outside_the_lock_and_may_emit_again() -> None:
    table = PendingOutcomes()
    first = _handles(table, 1)[0]
    table.add(first)
    added: list[EmitHandle] = []

    def emit_again(_: object) -> None:  # would deadlock if the table's lock were held here
        h = EmitHandle(uuid.uuid4(), "s", "again", table)
        table.add(h)
        added.append(h)

    first.future.add_done_callback(emit_again)
    done = threading.Thread(target=table.settle, args=([EmitResult(first.event_id, Outcome.COMMITTED)],))
    done.start()
    done.join(5)
    assert not done.is_alive() and len(added) == 1 and len(table) == 1


def test_emitters_and_a_settler_running_concurrently_resolve_every_handle_once() -> None:
    table = PendingOutcomes()
    emitted: list[list[EmitHandle]] = [[] for _ in range(4)]
    stop = threading.Event()
    completions: list[uuid.UUID] = []
    lock = threading.Lock()

    def on_done(f: Any) -> None:
        with lock:
            completions.append(f.result().event_id)

    def emitter(k: int) -> None:
        for i in range(2000):
            batch = _handles(table, 1 + i % 3)
            table.add_many(batch) if len(batch) > 1 else table.add(batch[0])
            if i % 7 == 0:
                batch[0].future.add_done_callback(on_done)
            emitted[k].extend(batch)

    def settler() -> None:
        rounds = 0
        while not stop.is_set() or len(table):
            ids = table.oldest(50)
            rounds += 1
            if rounds % 2:  # as the listener does: rows by id text, results made with the handle's UUID
                table.settle_rows({i: i for i in ids}, lambda eid, _: EmitResult(eid, Outcome.COMMITTED))
            else:
                table.settle([EmitResult(uuid.UUID(i), Outcome.COMMITTED) for i in ids])

    threads = [threading.Thread(target=emitter, args=(k,)) for k in range(4)]
    s = threading.Thread(target=settler)
    s.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    s.join(60)
    handles = [h for hs in emitted for h in hs]
    assert len(handles) == 4 * sum(1 + i % 3 for i in range(2000))
    assert all(h.result(0).event_id == h.event_id for h in handles)
    assert len(completions) == len(set(completions)) == 4 * len(range(0, 2000, 7))


def test_fresh_event_ids_are_random_version_4_uuids_like_uuid4s() -> None:
    import pickle

    seen = set()
    for _ in range(2000):
        u, text = new_event_id()
        twin = uuid.UUID(text)
        assert isinstance(u, uuid.UUID) and str(u) == text and u == twin and hash(u) == hash(twin)
        assert (u.version, u.variant) == (4, uuid.RFC_4122) and u.is_safe is uuid.SafeUUID.unknown
        assert pickle.loads(pickle.dumps(u)) == u and {u: 1}[twin] == 1
        seen.add(u)
    assert len(seen) == 2000
    bits = [sum((u.int >> b) & 1 for u in seen) for b in range(128)]
    fixed = {b for b in range(128) if bits[b] in (0, 2000)}
    assert fixed == {62, 63, 76, 77, 78, 79}  # only the variant and version bits are constant
