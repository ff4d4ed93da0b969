"""The projector's pure decision rules: dedup, key reuse, kill switch, fencing, expected versions."""

from __future__ import annotations

import uuid

from eventstore.core.decisions import Candidate, CommittedKey, KnownState, decide_batch
from eventstore.core.hashing import canonical_json, intent_hash
from eventstore.core.outcomes import Outcome, ReasonCode
from eventstore.wire.envelope import Envelope, LeaseRef


def cand(stream: str = "s", key: str | None = None, expected: int | None = None, payload: int = 1,
         agent: str = "a", lease: LeaseRef | None = None) -> Candidate[Envelope]:
    eid = uuid.uuid4()
    env = Envelope(event_id=eid, idempotency_key=key or str(eid), stream=stream, expected_version=expected,
                   agent_id=agent, correlation_id=eid, type="T", schema_version=1, payload={"x": payload},
                   lease=lease)
    return Candidate(env, intent_hash("T", 1, stream, canonical_json({"x": payload})))


def test_new_stream_is_at_zero_and_first_event_gets_version_one() -> None:
    d = decide_batch([cand(expected=0)], KnownState({}, {}))
    assert d[0].status is Outcome.COMMITTED and d[0].version == 1


def test_expected_version_mismatch_is_a_conflict_with_the_current_version() -> None:
    d = decide_batch([cand(expected=3)], KnownState({"s": 5}, {}))
    assert d[0].status is Outcome.CONFLICT and d[0].current_version == 5


def test_none_expected_version_means_no_check() -> None:
    d = decide_batch([cand(expected=None)], KnownState({"s": 5}, {}))
    assert d[0].status is Outcome.COMMITTED and d[0].version == 6


def test_checks_in_offset_order_within_a_batch() -> None:
    batch = [cand(expected=0), cand(expected=0), cand(expected=1), cand(expected=1)]
    got = [(d.status, d.version, d.current_version) for d in decide_batch(batch, KnownState({}, {}))]
    assert got == [
        (Outcome.COMMITTED, 1, 0), (Outcome.CONFLICT, None, 1),
        (Outcome.COMMITTED, 2, 1), (Outcome.CONFLICT, None, 2),
    ]


def test_streams_are_versioned_independently() -> None:
    d = decide_batch([cand("a", expected=0), cand("b", expected=0)], KnownState({}, {}))
    assert [x.version for x in d] == [1, 1]


def test_committed_key_with_same_intent_is_a_duplicate_of_the_original() -> None:
    c = cand(key="k")
    known = KnownState({"s": 1}, {"k": CommittedKey(7, "s", 1, c.intent)})
    d = decide_batch([c], known)[0]
    assert d.status is Outcome.DUPLICATE and d.original is not None and d.original.position == 7


def test_committed_key_with_other_payload_is_rejected_as_reuse() -> None:
    original = cand(key="k", payload=1)
    known = KnownState({"s": 1}, {"k": CommittedKey(7, "s", 1, original.intent)})
    d = decide_batch([cand(key="k", payload=2)], known)[0]
    assert d.status is Outcome.REJECTED and d.code is ReasonCode.KEY_REUSED


def test_duplicate_inside_one_batch_points_at_the_first() -> None:
    first = cand(key="k")
    again = Candidate(first.envelope.model_copy(update={"event_id": uuid.uuid4()}), first.intent)
    d = decide_batch([first, again], KnownState({}, {}))
    assert d[0].status is Outcome.COMMITTED
    assert d[1].status is Outcome.DUPLICATE and d[1].duplicate_of == 0


def test_duplicate_wins_over_a_version_conflict() -> None:
    """A retry of a committed event with a stale expected version still gets its original outcome."""
    c = cand(key="k", expected=0)
    known = KnownState({"s": 9}, {"k": CommittedKey(1, "s", 1, c.intent)})
    assert decide_batch([c], known)[0].status is Outcome.DUPLICATE


def test_rejected_and_conflicting_events_do_not_move_the_version() -> None:
    batch = [cand(expected=5), cand(key="x", payload=2), cand(expected=0)]
    known = KnownState({}, {"x": CommittedKey(1, "s", 1, b"other")})
    d = decide_batch(batch, known)
    assert [x.status for x in d] == [Outcome.CONFLICT, Outcome.REJECTED, Outcome.COMMITTED]
    assert d[2].version == 1


def test_killed_agent_is_rejected() -> None:
    d = decide_batch([cand(agent="bad")], KnownState({}, {}, killed_agents={"bad": "looping"}))[0]
    assert d.status is Outcome.REJECTED and d.code is ReasonCode.AGENT_KILLED


def test_stale_and_unknown_lease_tokens_are_rejected_current_one_accepted() -> None:
    known = KnownState({}, {}, fence_tokens={"r": 5})
    stale = decide_batch([cand(lease=LeaseRef(resource="r", token=4))], known)[0]
    current = decide_batch([cand(lease=LeaseRef(resource="r", token=5))], known)[0]
    forged = decide_batch([cand(lease=LeaseRef(resource="r", token=6))], known)[0]
    never = decide_batch([cand(lease=LeaseRef(resource="q", token=1))], known)[0]
    assert stale.status is Outcome.REJECTED and stale.code is ReasonCode.LEASE_STALE
    assert current.status is Outcome.COMMITTED
    assert forged.status is Outcome.REJECTED and never.status is Outcome.REJECTED
    assert (stale.code, forged.code, never.code) == ("lease_stale", "lease_unknown", "lease_unknown")
