"""The agent's emit checks and ids without servers: the SDK's hot path (sdk/prepare.py: compiled payload
check, NUL test on the written bytes, streams checked once) refuses exactly what ``validate_event`` +
``check_stream`` + ``check_options`` refuse, naming the same fault first; fresh event ids stay random
version-4 UUIDs, unique across threads and across a fork."""

from __future__ import annotations

import os
import threading
import uuid
import warnings
from typing import Any

import pytest
from pydantic import Field

from eventstore.core.auth import Credential
from eventstore.core.errors import InvalidEventError
from eventstore.core.events import Event, validate_event
from eventstore.core.ids import event_id_texts, next_event_id, uuid_of
from eventstore.core.records import LeaseRef
from eventstore.core.validation import check_stream
from eventstore.sdk.pending import EmitHandle, PendingOutcomes
from eventstore.sdk.prepare import Preparer, check_options
from eventstore.wire.envelope import decode


class PrepNote(Event):
    text: str = Field(max_length=5000)
    n: int = 0


class PrepBag(Event):  # a dict field: no compiled check, pydantic decides
    data: dict[str, Any]


class PrepCoded(Event):  # a pattern: no compiled check
    code: str = Field(pattern=r"^[a-z]\d$")


class PrepServerNote(Event):
    server_only = True
    text: str


def _preparer(max_bytes: int = 1 << 20) -> Preparer:
    return Preparer("prep-agent", Credential.new(), max_bytes, PendingOutcomes())


def _reference(event: Any, stream: Any, opts: dict[str, Any]) -> str | None:
    """What the SDK checked before this path: validate_event, then check_stream, then the options."""
    try:
        validate_event(event)
        check_stream(stream)
        check_options(opts.get("expected_version"), opts.get("idempotency_key"), opts.get("correlation_id"),
                      opts.get("causation_id"), opts.get("lease"))
    except InvalidEventError as e:
        return str(e)
    return None


def _fast(prep: Preparer, event: Any, stream: Any, opts: dict[str, Any]) -> str | None:
    try:
        prep.prepare(event, stream, opts.get("expected_version"), opts.get("idempotency_key"),
                     opts.get("correlation_id"), opts.get("causation_id"), opts.get("lease"), next_event_id())
    except InvalidEventError as e:
        return str(e)
    return None


def _cases() -> list[tuple[Any, Any, dict[str, Any]]]:
    nul = PrepNote(text="a\x00b")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # model_construct with a wrong type warns when dumped
        wrong_type = PrepNote.model_construct(text=5, n=0)
        too_long = PrepNote.model_construct(text="x" * 5001, n=0)
        bad_code = PrepCoded.model_construct(code="zz")
        huge_int = PrepNote.model_construct(text="ok", n=2**70)
        nul_constructed = PrepNote.model_construct(text="\x00", n="x")
    return [
        (PrepNote(text="ok"), "s-1", {}),
        (PrepNote(text="ok", n=-3), "s-1", {"expected_version": 0, "idempotency_key": "k-1"}),
        (nul, "s-1", {}),
        (nul, "lease-x", {}),  # NUL and a reserved stream: the NUL is named first, as before
        (nul, "", {}),
        (nul, 7, {}),
        (nul, "s-1", {"expected_version": -1}),
        (nul, "s-1", {"lease": "not a lease"}),
        (nul_constructed, "s-1", {}),
        (PrepNote(text="literal \\u0000, no NUL"), "s-1", {}),  # the JSON text holds \\u0000: the walk decides
        (PrepNote(text="ok"), "lease-x", {}),
        (PrepNote(text="ok"), "agent-7", {}),
        (PrepNote(text="ok"), "", {}),
        (PrepNote(text="ok"), "tab\there", {}),
        (PrepNote(text="ok"), "x" * 201, {}),
        (PrepNote(text="ok"), 5, {}),
        (PrepNote(text="ok"), "s-1", {"expected_version": True}),
        (PrepNote(text="ok"), "s-1", {"idempotency_key": "line\nbreak"}),
        (PrepNote(text="ok"), "s-1", {"correlation_id": "not-a-uuid"}),
        (PrepNote(text="ok"), "s-1", {"causation_id": 12}),
        (PrepNote(text="ok"), "s-1", {"lease": LeaseRef(resource="r", token=1)}),
        (wrong_type, "s-1", {}),
        (too_long, "s-1", {}),
        (huge_int, "s-1", {}),
        (bad_code, "s-1", {}),
        (PrepCoded(code="a1"), "s-1", {}),
        (PrepBag(data={"k\x00": 1}), "s-1", {}),
        (PrepBag(data={"k": ["v", {"deep": "x\x00"}]}), "lease-1", {}),
        (PrepBag(data={"k": "v"}), "s-1", {}),
        (PrepServerNote(text="x"), "s-1", {}),
        (Event(), "s-1", {}),
        (object(), "s-1", {}),
    ]


def test_the_fast_path_refuses_what_the_reference_refuses_with_the_same_reason() -> None:
    prep = _preparer()
    cases = _cases()
    refused = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for event, stream, opts in cases:
            expected = _reference(event, stream, opts)
            for _ in range(2):  # the second time the stream is known to the preparer
                assert _fast(prep, event, stream, opts) == expected, (event, stream, opts)
            refused += expected is not None
    assert refused >= 25  # the cases really exercise refusals


def test_an_accepted_event_is_written_with_the_reference_payload() -> None:
    prep = _preparer()
    for event in (PrepNote(text="ünï \"q\" \\ 🙂", n=2**62), PrepBag(data={"a": [1, 2.5, None, {"b": True}]}),
                  PrepCoded(code="b7"), PrepNote(text="literal \\u0000")):
        handle, key, value, headers = prep.prepare(event, "s-1", None, None, None, None, None, next_event_id())
        env = decode(value)
        assert env.payload == validate_event(event) and key == b"s-1"
        assert str(env.event_id) == handle._key == env.idempotency_key and handle.event_id == env.event_id
        assert dict(headers)["es-event-id"] == handle._key.encode()


def test_an_oversized_event_is_refused_before_anything_is_sent() -> None:
    prep = _preparer(max_bytes=600)
    prep.prepare(PrepNote(text="x" * 10), "s-1", None, None, None, None, None, next_event_id())
    with pytest.raises(InvalidEventError, match="EVENTSTORE_MAX_EVENT_BYTES"):
        prep.prepare(PrepNote(text="x" * 700), "s-1", None, None, None, None, None, next_event_id())


def test_known_streams_are_bounded() -> None:
    prep = _preparer()
    for i in range(prep._streams.limit + 10):
        prep.prepare(PrepNote(text="x"), f"s-{i}", None, None, None, None, None, next_event_id())
    assert 0 < len(prep._streams) <= prep._streams.limit


def _fixed_bits(ids: list[str]) -> set[int]:
    ints = [uuid.UUID(t).int for t in ids]
    return {b for b in range(128) if sum((i >> b) & 1 for i in ints) in (0, len(ints))}


def test_batched_ids_are_canonical_random_version_4_uuids() -> None:
    ids = event_id_texts(3000) + [next_event_id() for _ in range(3000)]
    assert len(set(ids)) == 6000
    for t in ids:
        u = uuid.UUID(t)
        assert str(u) == t and (u.version, u.variant) == (4, uuid.RFC_4122)
        fast = uuid_of(t)
        assert fast == u and hash(fast) == hash(u) and str(fast) == t and fast.is_safe is uuid.SafeUUID.unknown
    assert _fixed_bits(ids) == {62, 63, 76, 77, 78, 79}  # only the variant and version bits are constant


def test_ids_from_the_pool_are_unique_across_threads() -> None:
    out: list[list[str]] = [[] for _ in range(4)]
    barrier = threading.Barrier(4)

    def take(i: int) -> None:
        barrier.wait()
        out[i].extend(next_event_id() for _ in range(20_000))

    threads = [threading.Thread(target=take, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    taken = [t for part in out for t in part]
    assert len(taken) == 80_000 and len(set(taken)) == 80_000


def test_a_forked_child_never_hands_out_its_parents_ids() -> None:
    next_event_id()  # the pool now holds ids drawn ahead
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then exit without running the parent's cleanup
        try:
            os.write(write, ",".join(next_event_id() for _ in range(50)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = set(f.read().split(","))
    os.waitpid(pid, 0)
    parent = {next_event_id() for _ in range(50)}
    assert len(child) == 50 and not child & parent


def test_a_handle_made_from_text_has_its_uuid() -> None:
    text = next_event_id()
    h = EmitHandle(None, "s", "k", PendingOutcomes(), text)
    assert h.event_id == uuid.UUID(text) and h.event_id is h.event_id
    with pytest.raises(TypeError):
        EmitHandle(None, "s", "k", PendingOutcomes())


def test_a_batch_dump_is_each_events_dump_and_refusals_stay_the_same() -> None:
    from eventstore.core.events import dump_payloads

    notes = [PrepNote(text=t, n=i) for i, t in enumerate(["a", "ünï 🙂", 'q"\\', "x" * 4000, "\x00", ""])]
    assert dump_payloads(notes) == [e.model_dump(mode="json") for e in notes]
    bags = [PrepBag(data={"f": 0.1, "inf": float("inf"), "l": [None, True, {"k": []}]}), PrepBag(data={})]
    assert dump_payloads(bags) == [e.model_dump(mode="json") for e in bags]
    assert dump_payloads([notes[0]]) is None  # one event: nothing to share
    assert dump_payloads([notes[0], bags[0]]) is None  # two classes: each is dumped alone
    assert dump_payloads([Event(), Event()]) is None
    prep = _preparer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for event, stream, opts in _cases():
            if not isinstance(event, Event) or type(event) is Event:
                continue
            dumped = dump_payloads([event, event])
            if dumped is None:
                continue
            try:
                prep.prepare(event, stream, opts.get("expected_version"), opts.get("idempotency_key"),
                             opts.get("correlation_id"), opts.get("causation_id"), opts.get("lease"),
                             next_event_id(), dumped[0])
                got = None
            except InvalidEventError as e:
                got = str(e)
            assert got == _reference(event, stream, opts), (event, stream, opts)


def _result_of(h: EmitHandle) -> Any:
    from eventstore.core.outcomes import EmitResult, Outcome

    return EmitResult(event_id=h.event_id, status=Outcome.COMMITTED, stream="s", version=1, position=1)


def test_blocked_results_wake_without_a_future_each_exactly_once() -> None:
    from eventstore.core.errors import ClientClosedError, EmitTimeout

    table = PendingOutcomes()
    handles = [EmitHandle(None, "s", f"k{i}", table, next_event_id()) for i in range(400)]
    table.add_many(handles)
    got: list[Any] = []
    lock = threading.Lock()

    def wait(part: list[EmitHandle]) -> None:
        for h in part:
            r = h.result(30)
            with lock:
                got.append((h._key, r.event_id))

    # two threads wait on every handle (the same handles), the settler resolves them in shuffled batches
    waiters = [threading.Thread(target=wait, args=(handles,)) for _ in range(2)]
    for t in waiters:
        t.start()
    order = handles[::-1]
    for i in range(0, len(order), 37):
        table.settle([_result_of(h) for h in order[i:i + 37]])
    for t in waiters:
        t.join(30)
    assert len(got) == 800 and {k for k, _ in got} == {h._key for h in handles}
    assert all(uuid.UUID(k) == eid for k, eid in got)
    assert all(h._future is None for h in handles)  # no Future was made for a blocked result()

    slow = EmitHandle(None, "s", "slow", table, next_event_id())
    table.add(slow)
    with pytest.raises(EmitTimeout, match="idempotency_key='slow'"):
        slow.result(0.05)
    assert slow._key not in table.oldest(10)  # a caller that gave up is forgotten (bounded memory)

    failing = EmitHandle(None, "s", "f", table, next_event_id())
    closing = EmitHandle(None, "s", "c", table, next_event_id())
    table.add_many([failing, closing])
    errors: dict[str, BaseException] = {}

    def wait_error(h: EmitHandle) -> None:
        try:
            h.result(30)
        except Exception as e:  # the test records whichever error arrives
            errors[h.idempotency_key] = e

    ts = [threading.Thread(target=wait_error, args=(h,)) for h in (failing, closing)]
    for t in ts:
        t.start()
    boom = RuntimeError("broker said no")
    table.fail(failing._key, boom)
    table.close()
    for t in ts:
        t.join(30)
    assert errors["f"] is boom and isinstance(errors["c"], ClientClosedError)
    assert failing.done() and closing.done()
    with pytest.raises(RuntimeError, match="broker said no"):
        failing.result(0)  # settled before anyone waits again: no lock, no Future


def test_refusal_notes_of_waiting_handles_survive_pruning_and_settled_ones_go() -> None:
    """The listener keeps a note per ignored (forgeable) identity refusal for the handle's timeout error; the
    notes are bounded by dropping those of handles no longer pending, never a waiting handle's."""
    from eventstore.core.errors import EmitTimeout

    table = PendingOutcomes()
    handles = [EmitHandle(None, "s", f"k{i}", table, next_event_id()) for i in range(30)]
    table.add_many(handles)
    for h in handles:
        table.notes[h._key] = f"bad_signature for {h._key}"
    table.settle([_result_of(h) for h in handles[:20]])
    table.prune_notes()
    assert set(table.notes) == {h._key for h in handles[20:]}
    table.prune_notes(keep=5)
    assert list(table.notes) == [h._key for h in handles[25:]]  # beyond the bound: the oldest go first
    with pytest.raises(EmitTimeout, match="bad_signature for"):
        handles[29].result(0.01)
    assert handles[29]._key not in table.notes
