"""Sealed outcome notifications (issue 11, aim 3): the SDK takes a decision straight from a notification
only when it is sealed with the agent's own key, and everything else falls back to the outcome tables.

Tried as an attacker with a role that can LISTEN and NOTIFY (any connected role can): a forged seal, an
old genuine outcome replayed for a new event id, another agent's genuine payload moved to this agent's
channel (as is and with the id swapped), truncations, an added row; none settles a pending emit, which
then commits for real. Also: decisions on envelopes that failed authentication are never sealed, and
with authentication off nothing is sealed and outcomes still arrive (through the lookup).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from eventstore import AgentClient, Outcome, Projector
from eventstore.core.auth import AgentKey, Credential, Signed, authenticate
from eventstore.core.outcomes import EmitResult, ReasonCode
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryAdjusted, stream_for
from eventstore.postgres import agents
from eventstore.postgres.outcomerecord import NOT_AUTHENTIC
from eventstore.wire.notifications import MAX_PAYLOAD, SEAL_MARK, OutcomeSeal, channel_for, pack, unpack
from tests.fix_projector import scalar, wait_until
from tests.test_roles import login_role

pytestmark = pytest.mark.raw_agents


def results(n: int, reason: str | None = None) -> list[EmitResult]:
    return [EmitResult(uuid.uuid4(), Outcome.COMMITTED if reason is None else Outcome.REJECTED, f"inventory-{i}",
                       None if reason else i + 1, None if reason else 100 + i, i + 1, reason,
                       None if reason is None else ReasonCode.NOT_PERMITTED) for i in range(n)]


# -- the seal itself (pure) --------------------------------------------------------------------


def test_a_sealed_payload_opens_with_the_agents_key_and_with_nothing_else() -> None:
    cred = Credential.new()
    seal = OutcomeSeal("alice", cred)
    rs = results(3)
    (payload,) = pack(rs, seal)
    assert payload.startswith("[[") and SEAL_MARK + cred.key_id in payload
    assert unpack(payload) == rs  # a reader that ignores the seal still reads the rows
    assert seal.open(payload) == [r.to_wire() for r in rs]
    (plain,) = pack(rs)
    assert seal.open(plain) is None  # unsealed: a wake-up only
    assert OutcomeSeal("alice", Credential.new()).open(payload) is None  # another key id
    assert OutcomeSeal("alice", Credential(cred.key_id, Credential.new().secret)).open(payload) is None  # same id
    assert OutcomeSeal("bob", cred).open(payload) is None  # bound to the agent id too


def test_every_truncation_and_every_single_character_change_of_a_sealed_payload_is_refused() -> None:
    seal = OutcomeSeal("alice", Credential.new())
    (payload,) = pack(results(2), seal)
    assert seal.open(payload) is not None
    for cut in range(len(payload)):
        assert seal.open(payload[:cut]) is None, cut
    for i, ch in enumerate(payload):
        for other in {"0", "a", "Z", ",", "]", '"'} - {ch}:
            assert seal.open(payload[:i] + other + payload[i + 1:]) is None, (i, other)


def test_rows_cannot_be_moved_swapped_or_added_between_sealed_payloads() -> None:
    alice, bob = OutcomeSeal("alice", Credential.new()), OutcomeSeal("bob", Credential.new())
    old, new = uuid.uuid4(), uuid.uuid4()
    (old_payload,) = pack([EmitResult(old, Outcome.REJECTED, "s", None, None, 3, "no", ReasonCode.NO_LEASE)], alice)
    replayed = old_payload.replace(str(old), str(new))  # an old decision for a new id
    assert replayed != old_payload and alice.open(replayed) is None
    (bobs,) = pack([EmitResult(old, Outcome.COMMITTED, "s", 1, 1, 1)], bob)
    assert alice.open(bobs) is None and alice.open(bobs.replace(str(old), str(new))) is None
    extra = json.dumps(EmitResult(new, Outcome.COMMITTED, "s", 1, 1, 1).to_wire(), separators=(",", ":"))
    added = old_payload.replace(SEAL_MARK, f",{extra}{SEAL_MARK}", 1)
    assert added != old_payload and alice.open(added) is None
    # the seal of one payload under another's rows
    (other,) = pack([EmitResult(new, Outcome.COMMITTED, "s", 1, 1, 1)], alice)
    spliced = other[:other.rindex(SEAL_MARK)] + old_payload[old_payload.rindex(SEAL_MARK):]
    assert alice.open(spliced) is None


def test_sealed_chunks_stay_under_the_notify_limit() -> None:
    seal = OutcomeSeal("a" * 200, Credential.new())
    many = pack(results(500), seal)
    assert len(many) > 1 and all(len(c.encode()) <= MAX_PAYLOAD for c in many)
    assert [seal.open(c) for c in many] == [[r.to_wire() for r in unpack(c)] for c in many]
    huge = pack(results(3, reason="x" * 20_000), seal)
    assert all(len(c.encode()) <= MAX_PAYLOAD and seal.open(c) is not None for c in huge)


def test_every_identity_refusal_is_one_the_projector_never_seals() -> None:
    """The projector seals a row only if its envelope passed authentication; it tells by the decision's
    code, so every code ``authenticate`` can return must be in the set it does not seal."""
    good = Credential.new()
    keys = {good.key_id: AgentKey(good.key_id, "alice", good.secret, "active"),
            "b" * 16: AgentKey("b" * 16, "bob", good.secret, "active"),
            "c" * 16: AgentKey("c" * 16, "alice", good.secret, "revoked")}
    tries = [None, Signed(b"{}", "d" * 16, "x" * 43), Signed(b"{}", good.key_id, "x" * 43),
             Signed(b"{}", "b" * 16, "x" * 43), Signed(b"{}", "c" * 16, "x" * 43)]
    from eventstore.core.auth import mac

    tries += [Signed(b"{}", k, mac(good.secret, b"{}")) for k in ("b" * 16, "c" * 16)]
    codes = {p[0] for t in tries if (p := authenticate("alice", t, keys)) is not None}
    assert codes and codes <= NOT_AUTHENTIC
    assert len(codes) == 3


# -- against the real servers ------------------------------------------------------------------


def register(settings: Settings, name: str) -> Credential:
    with psycopg.connect(settings.require_database(), autocommit=True) as conn, conn.cursor() as cur:
        return agents.register(cur, name, None, None)


@pytest.fixture
def creds(settings: Settings) -> dict[str, Credential]:
    return {name: register(settings, name) for name in ("alice", "bob", "mallory")}


@pytest.fixture
def spy(settings: Settings) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A connection of an ordinary agent login: it may LISTEN on and NOTIFY any channel."""
    with login_role(settings.require_database(), "eventstore_agent") as url, \
            psycopg.connect(url, autocommit=True) as conn:
        yield conn


_heard: list[tuple[str, str]] = []


def heard(conn: psycopg.Connection[tuple[object, ...]], channel: str, event_id: uuid.UUID) -> str:
    """The payload on ``channel`` that names ``event_id`` (waits for it). Every notification read is kept:
    leaving psycopg's ``notifies()`` early would drop those it had already read."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for ch, payload in _heard:
            if ch == channel and str(event_id) in payload:
                return payload
        _heard.extend((n.channel, n.payload) for n in conn.notifies(timeout=0.2))
    pytest.fail(f"no notification naming {event_id} on {channel}")


def start_projector(settings: Settings) -> Projector:
    p = Projector(settings).start()
    if not p.ready.wait(30):
        p.stop()
        pytest.fail("the projector was not assigned its partitions within 30s")
    return p


def test_an_attacker_who_can_notify_cannot_settle_a_pending_emit(
        settings: Settings, creds: dict[str, Credential], spy: psycopg.Connection[tuple[object, ...]]) -> None:
    a_chan, b_chan = channel_for("alice"), channel_for("bob")
    spy.execute(f"LISTEN {a_chan}")
    spy.execute(f"LISTEN {b_chan}")
    proj = start_projector(settings)
    try:
        with AgentClient("alice", settings, credential=creds["alice"]) as alice, \
                AgentClient("bob", settings, credential=creds["bob"]) as bob:
            first = alice.emit(InventoryAdjusted(sku="SA1", delta=1), stream_for("SA1"))
            assert first.result(30).status is Outcome.COMMITTED
            assert alice._listener.sealed_settled == 1  # genuine: taken from the notification, no query
            theirs = bob.emit(InventoryAdjusted(sku="SB1", delta=1), stream_for("SB1"))
            assert theirs.result(30).status is Outcome.COMMITTED
            alice_old, bob_old = heard(spy, a_chan, first.event_id), heard(spy, b_chan, theirs.event_id)
            assert SEAL_MARK in alice_old and SEAL_MARK in bob_old  # what the attacker captured is sealed
            proj.stop()

            pending = alice.emit(InventoryAdjusted(sku="SA2", delta=1), stream_for("SA2"))
            alice.flush()
            new, old, bobs = str(pending.event_id), str(first.event_id), str(theirs.event_id)
            fake = EmitResult(pending.event_id, Outcome.COMMITTED, stream_for("SA2"), 1, 1, 1)
            forged_key = OutcomeSeal("alice", Credential(creds["alice"].key_id, Credential.new().secret))
            attacks = [
                pack([fake], forged_key)[0],  # a seal under a made-up key with alice's key id
                alice_old.replace(old, new),  # alice's old genuine outcome replayed for the new id
                bob_old.replace(bobs, new),  # bob's genuine payload, its id swapped for alice's
                bob_old,  # bob's genuine payload, as is, on alice's channel
                alice_old.replace(SEAL_MARK, "," + json.dumps(fake.to_wire(), separators=(",", ":")) + SEAL_MARK),
                alice_old[:len(alice_old) // 2],  # truncated
                alice_old[:alice_old.rindex(SEAL_MARK)].replace(old, new) + "]",  # the seal cut off, id swapped
                alice_old,  # replayed verbatim: names an id nobody waits for any more
            ]
            for payload in attacks:
                spy.execute("SELECT pg_notify(%s, %s)", (a_chan, payload))
            time.sleep(1.5)
            assert not pending.done(), "a forged, replayed, swapped or truncated notification settled an emit"
            assert alice._listener.sealed_settled == 1

            proj = start_projector(settings)  # the event is decided for real, and its outcome arrives
            got = pending.result(30)
            assert (got.status, got.version) == (Outcome.COMMITTED, 1)
            assert got.position == scalar(settings.require_database(),
                                          "SELECT position FROM events WHERE event_id = %s", (pending.event_id,))
            wait_until(lambda: alice._listener.sealed_settled == 2, 10, "the genuine sealed outcome")
    finally:
        proj.stop()


def test_refusals_of_a_forged_identity_are_never_sealed(
        settings: Settings, projector: Projector, creds: dict[str, Credential],
        spy: psycopg.Connection[tuple[object, ...]]) -> None:
    """mallory emits as alice with her own key, with alice's key id and a made-up key (a MAC that fails
    under alice's key), and unsigned: every row goes to alice's channel unsealed. The clients with mallory's
    key and without a credential learn the decision from the tables. The one posing with alice's key id no
    longer does (changed with migration 0012): a wrong MAC proves nothing about who sent the envelope, so
    its refusal is what any attacker could make for alice's pending event ids, and a client holding a
    credential is never settled by it (docs/security.md, "Identity refusals"); it stays pending."""
    chan = channel_for("alice")
    spy.execute(f"LISTEN {chan}")
    posing = Credential(creds["alice"].key_id, Credential.new().secret)
    with AgentClient("alice", settings, credential=creds["mallory"]) as fake, AgentClient("alice", settings) as bare, \
            AgentClient("alice", settings, credential=posing) as pose:
        for client in (fake, bare):
            h = client.emit(InventoryAdjusted(sku="SF1", delta=1), stream_for("SF1"))
            assert h.result(30).reason_code is ReasonCode.BAD_SIGNATURE
            assert SEAL_MARK not in heard(spy, chan, h.event_id)
        h = pose.emit(InventoryAdjusted(sku="SF1", delta=1), stream_for("SF1"))
        assert SEAL_MARK not in heard(spy, chan, h.event_id)
        time.sleep(1.5)  # past the listener's re-check: the refusal is in the tables, and not taken
        assert not h.done()
        assert fake._listener.sealed_settled == pose._listener.sealed_settled == 0
    with AgentClient("alice", settings, credential=creds["alice"]) as alice:
        h = alice.emit(InventoryAdjusted(sku="SF2", delta=1), stream_for("SF2"), expected_version=7)
        assert h.result(30).status is Outcome.CONFLICT
        assert SEAL_MARK in heard(spy, chan, h.event_id)
        assert alice._listener.sealed_settled == 1


def test_with_authentication_off_nothing_is_sealed_and_outcomes_still_arrive(
        settings: Settings, creds: dict[str, Credential], spy: psycopg.Connection[tuple[object, ...]]) -> None:
    chan = channel_for("alice")
    spy.execute(f"LISTEN {chan}")
    proj = start_projector(settings.replace(auth=False))
    try:
        with AgentClient("alice", settings, credential=creds["alice"]) as alice:
            h = alice.emit(InventoryAdjusted(sku="SO1", delta=1), stream_for("SO1"))
            assert h.result(30).status is Outcome.COMMITTED
            assert SEAL_MARK not in heard(spy, chan, h.event_id)
            assert alice._listener.sealed_settled == 0  # read from the tables
    finally:
        proj.stop()
