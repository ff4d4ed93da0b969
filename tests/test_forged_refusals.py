"""A forged envelope must never settle another agent's emit (docs/security.md, "Identity refusals").

The attacker can produce to the intake topic (no Kafka ACLs) and read an agent's pending event ids from it.
It sends envelopes naming alice and one of her event ids: unsigned, with a wrong MAC under alice's key id,
with a key id nobody registered, signed with its own (mallory's) credential, and signed with alice's
leaked, revoked credential. Each is refused for its identity, recorded in ``identity_refusals`` (never
under the event id in ``outcomes``), and alice's client, holding her current credential, neither settles
on any of them nor loses its genuine decision, whether the forgeries are decided before, after or in the
same batch as the genuine envelope, on its partition or another.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer

from eventstore import AgentClient, Outcome, Projector
from eventstore.core.auth import AgentKey, Credential, sign, signed_by, split_signed
from eventstore.core.errors import EmitTimeout
from eventstore.core.history_query import HistoryQuery
from eventstore.core.outcomes import EmitResult, ReasonCode
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryAdjusted, stream_for
from eventstore.postgres import agents, sidechains
from eventstore.postgres.history import query
from eventstore.postgres.refusals import list_refusals
from eventstore.wire.envelope import EnvelopeWriter
from tests.fix_projector import scalar, wait_until
from tests.test_roles import denied, login_role

pytestmark = pytest.mark.raw_agents

P, Q = 1, 3  # the genuine envelope's partition, and another one (the test topics have 4)


# -- pure ------------------------------------------------------------------------------------------


def test_signed_by_names_the_key_only_when_its_mac_verifies() -> None:
    alice, mallory, old = Credential.new(), Credential.new(), Credential.new()
    keys = {c.key_id: AgentKey(c.key_id, agent, c.secret, status)
            for c, agent, status in ((alice, "alice", "active"), (mallory, "mallory", "active"),
                                     (old, "alice", "revoked"))}
    body = b'{"event_id":"x","agent_id":"alice"}'
    assert signed_by(None, keys) is None  # unsigned: anyone
    assert signed_by(split_signed(sign(body, Credential.new())), keys) is None  # unknown key id: anyone
    posing = Credential(alice.key_id, Credential.new().secret)
    assert signed_by(split_signed(sign(body, posing)), keys) is None  # wrong MAC under alice's key id: anyone
    for cred in (alice, mallory, old):  # verified: a holder of that key, whoever the envelope names
        found = signed_by(split_signed(sign(body, cred)), keys)
        assert found is not None and found.key_id == cred.key_id


# -- against the real servers ------------------------------------------------------------------------


@pytest.fixture
def creds(settings: Settings) -> dict[str, Credential]:
    """alice (current), alice-old (hers, rotated away: a leaked revoked key), mallory; and the attacker's
    made-up ones: alice's key id with a made-up secret (a wrong MAC), a key id nobody registered."""
    with psycopg.connect(settings.require_database(), autocommit=True) as conn, conn.cursor() as cur:
        old = agents.register(cur, "alice", None, None)
        new = agents.rotate(cur, "alice")
        assert new is not None
        return {"alice": new, "alice-old": old, "mallory": agents.register(cur, "mallory", None, None),
                "posing": Credential(new.key_id, Credential.new().secret), "unknown": Credential.new()}


@pytest.fixture
def producer(settings: Settings) -> Iterator[Producer]:
    p = Producer({"bootstrap.servers": settings.require_kafka()})
    yield p
    p.flush(10)


def forgers(creds: dict[str, Credential]) -> dict[str, Credential | None]:
    """What the attacker signs with, and (by name) what the projector can prove about each."""
    return {
        "unsigned": None,
        "wrong-mac": creds["posing"],
        "unknown-key": creds["unknown"],
        "mallory": creds["mallory"],
        "leaked-revoked": creds["alice-old"],
    }


def send(settings: Settings, producer: Producer, cred: Credential | None, event_id: uuid.UUID, sku: str,
         partition: int, expected_version: int | None = None, agent: str = "alice") -> None:
    """One envelope naming ``agent`` and ``event_id``, written by the SDK's own codec, produced raw."""
    event = InventoryAdjusted(sku=sku, delta=1)
    key, value, headers = EnvelopeWriter(agent, cred).write(
        str(event_id), str(event_id), stream_for(sku), expected_version, event_id, None, None, event.event_type,
        event.schema_version, event.model_dump(mode="json"), None)
    producer.produce(settings.intake_topic, key=key, value=value, headers=headers, partition=partition)


def forge_all(settings: Settings, producer: Producer, creds: dict[str, Credential], event_id: uuid.UUID,
              sku: str) -> int:
    """Every forgery, on the genuine envelope's partition and on another one; how many were sent."""
    n = 0
    for cred in forgers(creds).values():
        for partition in (P, Q):
            send(settings, producer, cred, event_id, sku, partition)
            n += 1
    assert producer.flush(10) == 0
    return n


def refusals_of(db: str, event_id: uuid.UUID) -> int:
    return int(scalar(db, "SELECT count(*) FROM identity_refusals WHERE claimed_event_id = %s", (event_id,)))


def outcome_rows(db: str, event_id: uuid.UUID) -> list[tuple[Any, ...]]:
    with psycopg.connect(db, autocommit=True) as conn:
        return conn.execute("SELECT agent_id, status, reason_code FROM outcomes WHERE event_id = %s",
                            (event_id,)).fetchall()


def test_forgeries_decided_first_neither_settle_the_emit_nor_hide_its_genuine_decision(
        settings: Settings, projector: Projector, creds: dict[str, Credential], producer: Producer) -> None:
    db = settings.require_database()
    with AgentClient("alice", settings, credential=creds["alice"]) as alice:
        x = uuid.uuid4()
        fut: Future[EmitResult] = alice._listener.expect(x)
        n = forge_all(settings, producer, creds, x, "F1")
        wait_until(lambda: refusals_of(db, x) == n, 60, f"{n} identity refusals of the forgeries")
        time.sleep(1.5)  # past the listener's re-check of pending handles
        assert not fut.done(), f"a forged refusal settled alice's emit: {fut.result()}"
        assert outcome_rows(db, x) == []  # no forgery took the event id's slot

        # alice's genuine envelope, on the partition the forgeries used: a conflict (a non-committed
        # decision, the one ON CONFLICT (event_id) DO NOTHING used to drop).
        send(settings, producer, creds["alice"], x, "F1", P, expected_version=7)
        assert producer.flush(10) == 0
        got = fut.result(60)
        assert (got.status, got.reason_code) == (Outcome.CONFLICT, ReasonCode.VERSION_CONFLICT)
        assert outcome_rows(db, x) == [("alice", "conflict", "version_conflict")]
        again = alice.outcome(x)
        assert again is not None and again.status is Outcome.CONFLICT

        # What each refusal records, and what the projector could prove (a holder of the key sent it).
        with psycopg.connect(db, autocommit=True) as conn:
            rows = conn.execute("SELECT key_id, proven, reason_code, agent_id, source_partition "
                                "FROM identity_refusals WHERE claimed_event_id = %s", (x,)).fetchall()
    assert len(rows) == n
    seen = {(key, proven, code) for key, proven, code, agent, _ in rows if agent == "alice"}
    assert seen == {
        (None, False, "bad_signature"),
        (creds["alice"].key_id, False, "bad_signature"),
        (creds["unknown"].key_id, False, "unknown_agent"),
        (creds["mallory"].key_id, True, "bad_signature"),
        (creds["alice-old"].key_id, True, "credential_revoked"),
    }
    assert {r[4] for r in rows} == {P, Q}


def test_forgeries_after_or_beside_the_genuine_envelope_change_nothing(
        settings: Settings, projector: Projector, creds: dict[str, Credential], producer: Producer) -> None:
    db = settings.require_database()
    with AgentClient("alice", settings, credential=creds["alice"]) as alice:
        # After: a committed event and a conflict, decided, then forged at.
        done = alice.emit(InventoryAdjusted(sku="G1", delta=1), stream_for("G1"))
        refused = alice.emit(InventoryAdjusted(sku="G2", delta=1), stream_for("G2"), expected_version=9)
        assert done.result(60).status is Outcome.COMMITTED
        assert refused.result(60).status is Outcome.CONFLICT
        # Beside: the genuine envelope and the forgeries produced back to back (mostly one batch), the
        # forgeries first on the genuine partition and on another.
        y = uuid.uuid4()
        fut = alice._listener.expect(y)
        n = forge_all(settings, producer, creds, y, "G3")
        send(settings, producer, creds["alice"], y, "G3", P, expected_version=4)
        n_after = forge_all(settings, producer, creds, done.event_id, "G1") \
            + forge_all(settings, producer, creds, refused.event_id, "G2")
        got = fut.result(60)
        assert (got.status, got.reason_code) == (Outcome.CONFLICT, ReasonCode.VERSION_CONFLICT)
        wait_until(lambda: refusals_of(db, done.event_id) + refusals_of(db, refused.event_id) == n_after, 60,
                   "the identity refusals of the later forgeries")
        assert refusals_of(db, y) == n
        # alice re-sends her committed envelope: a duplicate row in outcomes beside the events row; the
        # committed row still answers.
        send(settings, producer, creds["alice"], done.event_id, "G1", P)
        assert producer.flush(10) == 0
        wait_until(lambda: len(outcome_rows(db, done.event_id)) == 1, 60, "the duplicate's outcome row")
        assert outcome_rows(db, done.event_id) == [("alice", "duplicate", "duplicate")]
        for event_id, status in ((done.event_id, Outcome.COMMITTED), (refused.event_id, Outcome.CONFLICT),
                                 (y, Outcome.CONFLICT)):
            r = alice.outcome(event_id)
            assert r is not None and r.status is status, (event_id, r)
            assert alice._listener.expect(event_id).result(30).status is status  # a fresh wait, from the tables
        assert outcome_rows(db, refused.event_id) == [("alice", "conflict", "version_conflict")]


def test_provable_refusals_still_answer_the_misconfigured_client_at_once(
        settings: Settings, projector: Projector, creds: dict[str, Credential]) -> None:
    """A leaked revoked key and mallory's key each settle the client that holds that key (proven: its MAC
    verified under it); a client without a credential is told about its unsigned envelope (nothing of its
    can commit); a key nobody registered is told ``unknown_agent`` (no envelope under it can commit)."""
    clients = {"revoked": (creds["alice-old"], ReasonCode.CREDENTIAL_REVOKED),
               "other agent's": (creds["mallory"], ReasonCode.BAD_SIGNATURE),
               "none": (None, ReasonCode.BAD_SIGNATURE),
               "made up": (Credential.new(), ReasonCode.UNKNOWN_AGENT)}
    for what, (cred, code) in clients.items():
        with AgentClient("alice", settings, credential=cred) as c:
            h = c.emit(InventoryAdjusted(sku="M1", delta=1), stream_for("M1"))
            got = h.result(60)
            assert (got.status, got.reason_code) == (Outcome.REJECTED, code), what
    db = settings.require_database()
    assert scalar(db, "SELECT count(*) FROM outcomes") == 0  # identity refusals never go to outcomes
    assert scalar(db, "SELECT count(*) FROM identity_refusals") == len(clients)


def test_auditors_see_every_identity_refusal_in_an_append_only_chain(
        settings: Settings, projector: Projector, creds: dict[str, Credential], producer: Producer,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from eventstore.cli.main import main

    db = settings.require_database()
    with AgentClient("alice", settings, credential=creds["alice"]) as alice:
        assert alice.emit(InventoryAdjusted(sku="A1", delta=1), stream_for("A1")).result(60).status \
            is Outcome.COMMITTED
    x = uuid.uuid4()
    n = forge_all(settings, producer, creds, x, "A1")
    wait_until(lambda: refusals_of(db, x) == n, 60, "the identity refusals")
    with login_role(db, "eventstore_auditor") as auditor:
        with psycopg.connect(auditor, autocommit=True) as conn:
            with conn.cursor() as cur:
                seen = list_refusals(cur, agent_id="alice")
                reports = {r.name: r for r in sidechains.verify_all(cur)}
            # The history shows them among the decisions around the write they were refused against.
            (write,) = query(conn, HistoryQuery.create(stream=stream_for("A1"))).rows
        assert denied(auditor, "UPDATE identity_refusals SET proven = true")
    around = [(o["event_id"], o["status"], o["reason_code"], o["current_version"]) for o in write.outcomes]
    assert sorted(around, key=str) == sorted(
        [(str(x), "rejected", code, 1) for code in ["bad_signature"] * 6 + ["unknown_agent"] * 2
         + ["credential_revoked"] * 2], key=str), around
    # ... marked as claims, with what the projector could prove, so none reads as alice's own decision.
    marks = sorted((o["source"], o["key_id"] or "", o["proven"]) for o in write.outcomes)
    assert marks == sorted(("identity_refusals", "" if c is None else c.key_id,
                            name in ("mallory", "leaked-revoked"))
                           for name, c in forgers(creds).items() for _ in (P, Q)), marks
    assert len(seen) == n and all(r.claimed_event_id == x and r.reason for r in seen)
    # The same list from the command line, as an auditor login.
    with login_role(db, "eventstore_auditor") as auditor:
        monkeypatch.setenv("EVENTSTORE_DATABASE_URL", auditor)
        assert main(["refusals", "--event", str(x), "--json"]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert main(["refusals", "--agent", "alice"]) == 0
        table = capsys.readouterr().out
        assert main(["refusals", "--event", "nope"]) == 2
        assert main(["history", "--stream", stream_for("A1")]) == 0
        printed = capsys.readouterr().out
        with pytest.raises(SystemExit) as bad_limit:
            main(["refusals", "--limit", "0"])
        assert bad_limit.value.code == 2 and "out of range 1-1000" in capsys.readouterr().err
    assert "rejected:bad_signature(claims alice, key -, forgeable)" in printed, printed
    assert f"rejected:credential_revoked(claims alice, key {creds['alice-old'].key_id}, proven)" in printed
    assert [(r["seq"], r["key_id"], r["proven"], r["code"]) for r in lines] == \
        [(r.seq, r.key_id, r.proven, r.reason_code) for r in seen]
    assert table.count(str(x)) == n and "credential_revoked" in table
    assert [r.seq for r in seen] == sorted(r.seq for r in seen)
    assert {r.source_partition for r in seen} == {P, Q} and all(r.source_offset is not None for r in seen)
    report = reports["identity_refusals"]
    assert report.ok and report.checked == n, report
    # Append-only even for the owner; a changed row would fail verification.
    with psycopg.connect(db, autocommit=True) as conn:
        for statement in ("UPDATE identity_refusals SET proven = NOT proven", "DELETE FROM identity_refusals",
                          "TRUNCATE identity_refusals"):
            with pytest.raises(psycopg.Error):
                conn.execute(statement)
    assert refusals_of(db, x) == n


def test_a_client_with_a_wrong_secret_waits_and_its_timeout_names_the_refusal(
        settings: Settings, projector: Projector, creds: dict[str, Credential]) -> None:
    """A mistyped secret under alice's key id makes a wrong MAC: indistinguishable from a forger's, so the
    refusal does not settle the emit; the timeout error says what was refused, so the operator can tell."""
    db = settings.require_database()
    with AgentClient("alice", settings, credential=creds["posing"]) as typo:
        h = typo.emit(InventoryAdjusted(sku="T1", delta=1), stream_for("T1"))
        wait_until(lambda: refusals_of(db, h.event_id) == 1, 60, "the refusal of the wrong MAC")
        time.sleep(1.5)  # past the listener's re-check
        assert not h.done()
        with pytest.raises(EmitTimeout, match=f"bad_signature: the signature does not match credential "
                                              f"{creds['alice'].key_id}"):
            h.result(2)


def test_only_a_proven_identity_refusal_reaches_the_rejections_topic(settings: Settings,
                                                                    creds: dict[str, Credential]) -> None:
    """The rejections topic names the claimed agent and event id, so a consumer of it would take a record for
    that agent's decision: only refusals the projector can prove (the MAC verified under the key named) are
    published there; the forgeable ones are in identity_refusals only."""
    from eventstore.core.events import registry
    from eventstore.postgres.intake import write_batch
    from eventstore.postgres.intakebatch import IntakeMessage
    from eventstore.wire.rejections import EventRejected

    x = uuid.uuid4()
    msgs = []
    for i, cred in enumerate(forgers(creds).values()):
        event = InventoryAdjusted(sku="R1", delta=1)
        key, value, _ = EnvelopeWriter("alice", cred).write(
            str(x), str(x), stream_for("R1"), None, x, None, None, event.event_type, event.schema_version,
            event.model_dump(mode="json"), None)
        msgs.append(IntakeMessage(0, i, key, value))
    with psycopg.connect(settings.require_database()) as conn:
        result = write_batch(conn, group="g-rej", topic="t-rej", messages=msgs, models=[], types=registry)
    published = [r for r in result.rejections if isinstance(r, EventRejected)]
    assert len(published) == len(result.rejections) == 2, result.rejections  # mallory's, alice's revoked key
    assert all(r.event_id == x and r.agent_id == "alice" for r in published)
    assert sorted(r.reason.split(" ")[0] for r in published) == ["credential", "credential"], published
    assert refusals_of(settings.require_database(), x) == len(msgs)
