"""Agents are not trusted (issue 9, part A): each attack of the issue, tried end to end on the real
servers (Kafka intake -> projector with authentication on -> PostgreSQL), each refused with its code.

These tests opt out of the automatic credentials of tests/fix_agents.py (``raw_agents``): every
client gets exactly the credential the attack gives it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from eventstore import AgentClient, Coordinator, Outcome, Projector
from eventstore.coordination import Lease
from eventstore.core.auth import Credential
from eventstore.core.errors import EmitTimeout
from eventstore.core.outcomes import EmitResult, ReasonCode
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryAdjusted, InventoryUpdated, stream_for
from eventstore.postgres import agents
from eventstore.sdk.client import build_envelope
from eventstore.wire.notifications import channel_for
from tests.fix_projector import scalar
from tests.test_roles import login_role

pytestmark = pytest.mark.raw_agents


def register(settings: Settings, name: str, **kw: list[str]) -> Credential:
    with psycopg.connect(settings.require_database(), autocommit=True) as conn, conn.cursor() as cur:
        return agents.register(cur, name, kw.get("streams"), kw.get("types"))


@pytest.fixture
def creds(settings: Settings) -> dict[str, Credential]:
    return {name: register(settings, name) for name in ("alice", "mallory", "bob")}


def emit(client: AgentClient, sku: str = "S1", *, lease: Lease | None = None,
         idempotency_key: str | None = None) -> EmitResult:
    return client.emit_and_wait(InventoryAdjusted(sku=sku, delta=1), stream_for(sku), timeout=30, lease=lease,
                                idempotency_key=idempotency_key)


def test_impersonation_with_ones_own_credential_is_rejected(settings: Settings, projector: Projector,
                                                            creds: dict[str, Credential]) -> None:
    with AgentClient("alice", settings, credential=creds["mallory"]) as fake, \
            AgentClient("alice", settings, credential=creds["alice"]) as real:
        r = emit(fake)
        assert (r.status, r.reason_code) == (Outcome.REJECTED, ReasonCode.BAD_SIGNATURE)
        assert emit(real).status is Outcome.COMMITTED
    db = settings.require_database()
    assert scalar(db, "SELECT count(*) FROM events WHERE stream = %s", (stream_for("S1"),)) == 1


def test_unsigned_and_unknown_credentials_are_rejected(settings: Settings, projector: Projector,
                                                       creds: dict[str, Credential]) -> None:
    with AgentClient("alice", settings) as unsigned, \
            AgentClient("alice", settings, credential=Credential.new()) as made_up:
        assert emit(unsigned).reason_code is ReasonCode.BAD_SIGNATURE
        assert emit(made_up).reason_code is ReasonCode.UNKNOWN_AGENT


def test_killed_agent_under_a_new_name_is_rejected(settings: Settings, projector: Projector,
                                                   creds: dict[str, Credential]) -> None:
    with Coordinator(settings) as coord:
        coord.kill("mallory", "runaway")
    with AgentClient("mallory", settings, credential=creds["mallory"]) as m, \
            AgentClient("mallory-2", settings, credential=creds["mallory"]) as m2, \
            AgentClient("mallory-3", settings) as m3:
        assert emit(m).reason_code is ReasonCode.AGENT_KILLED
        assert emit(m2).reason_code is ReasonCode.BAD_SIGNATURE  # her credential is hers, not mallory-2's
        assert emit(m3).reason_code is ReasonCode.BAD_SIGNATURE  # a new name has no credential
    db = settings.require_database()
    assert scalar(db, "SELECT count(*) FROM events WHERE stream = %s", (stream_for("S1"),)) == 0


def test_rotated_and_removed_credentials_stop_working(settings: Settings, projector: Projector,
                                                      creds: dict[str, Credential]) -> None:
    with psycopg.connect(settings.require_database(), autocommit=True) as conn, conn.cursor() as cur:
        new = agents.rotate(cur, "alice")
        assert new is not None
        assert agents.remove(cur, "bob")
    with AgentClient("alice", settings, credential=creds["alice"]) as old, \
            AgentClient("alice", settings, credential=new) as cur_client, \
            AgentClient("bob", settings, credential=creds["bob"]) as bob:
        assert emit(old).reason_code is ReasonCode.CREDENTIAL_REVOKED
        assert emit(cur_client).status is Outcome.COMMITTED
        assert emit(bob).reason_code is ReasonCode.CREDENTIAL_REVOKED


def test_permissions_limit_streams_and_types(settings: Settings, projector: Projector) -> None:
    cred = register(settings, "feed", streams=["inventory-F*"], types=["InventoryUpdated"])
    with AgentClient("feed", settings, credential=cred) as c:
        ok = c.emit_and_wait(InventoryUpdated(sku="F1", quantity=3), stream_for("F1"), timeout=30)
        assert ok.status is Outcome.COMMITTED
        assert emit(c, "F1").reason_code is ReasonCode.NOT_PERMITTED  # InventoryAdjusted is not allowed
        wrong = c.emit_and_wait(InventoryUpdated(sku="G1", quantity=3), stream_for("G1"), timeout=30)
        assert wrong.reason_code is ReasonCode.NOT_PERMITTED


def test_another_agents_idempotency_keys_and_event_ids_cannot_be_claimed(
        settings: Settings, projector: Projector, creds: dict[str, Credential]) -> None:
    with AgentClient("alice", settings, credential=creds["alice"]) as alice, \
            AgentClient("mallory", settings, credential=creds["mallory"]) as mallory:
        # Mallory claims alice's next key in advance: it is mallory's own key, alice's is untouched.
        assert emit(mallory, "K1", idempotency_key="alice-order-1").status is Outcome.COMMITTED
        mine = emit(alice, "K2", idempotency_key="alice-order-1")
        assert mine.status is Outcome.COMMITTED
        # Mallory reuses alice's event id: refused, and alice's outcome still reads COMMITTED.
        env = build_envelope("mallory", InventoryAdjusted(sku="K3", delta=1), stream_for("K3"), expected_version=None,
                             idempotency_key="alice-order-1", correlation_id=None, causation_id=None, lease=None)
        stolen = mallory.emit_envelope(env.model_copy(update={"event_id": mine.event_id})).result(30)
        assert (stolen.status, stolen.reason_code) == (Outcome.REJECTED, ReasonCode.EVENT_ID_TAKEN)
        again = alice.outcome(mine.event_id)
        assert again is not None and again.status is Outcome.COMMITTED and again.stream == stream_for("K2")


def test_forged_notification_is_only_a_wake_up(settings: Settings, servers: object,
                                               creds: dict[str, Credential]) -> None:
    """No projector runs: the event stays undecided. Another role NOTIFYs alice's channel with a fake
    COMMITTED outcome; the client does not accept it (the outcome tables say nothing yet)."""
    db = settings.require_database()
    with login_role(db, "eventstore_agent") as other_url, \
            AgentClient("alice", settings, credential=creds["alice"]) as alice:
        handle = alice.emit(InventoryAdjusted(sku="N1", delta=1), stream_for("N1"))
        alice.flush()
        fake = EmitResult(handle.event_id, Outcome.COMMITTED, stream_for("N1"), 1, 1, 1)
        with psycopg.connect(other_url, autocommit=True) as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (channel_for("alice"), json.dumps([fake.to_wire()])))
            conn.execute("SELECT pg_notify(%s, %s)", (channel_for("alice"), "not json"))
        time.sleep(1.5)
        assert not handle.done()
        with pytest.raises(EmitTimeout):
            handle.result(0.5)
        assert alice._listener.pending == 0  # the timed-out handle was forgotten (bounded memory)


@pytest.fixture
def guarded(settings: Settings) -> Iterator[str]:
    with psycopg.connect(settings.require_database(), autocommit=True) as conn, conn.cursor() as cur:
        agents.guard(cur, "inventory-G*", "lock:{stream}")
    yield "lock:" + stream_for("G1")


def test_guarded_stream_refuses_writes_without_the_current_lease(
        settings: Settings, projector: Projector, creds: dict[str, Credential], guarded: str) -> None:
    with Coordinator(settings) as coord, AgentClient("alice", settings, credential=creds["alice"]) as alice, \
            AgentClient("bob", settings, credential=creds["bob"]) as bob:
        assert emit(alice, "G1").reason_code is ReasonCode.NO_LEASE  # nobody holds it, no lease given
        lease = coord.acquire(guarded, agent_id="alice", ttl=1.0)
        assert emit(alice, "G1", lease=lease).status is Outcome.COMMITTED
        assert emit(bob, "G1").reason_code is ReasonCode.NOT_HOLDER  # no lease, alice holds it
        assert emit(bob, "G1", lease=lease).reason_code is ReasonCode.NOT_HOLDER  # alice's token
        time.sleep(1.5)  # alice's lease expires by the database clock; nobody reclaimed it yet
        assert emit(alice, "G1", lease=lease).reason_code is ReasonCode.LEASE_EXPIRED
        nxt = coord.acquire(guarded, agent_id="bob", ttl=10.0, wait=5.0)
        assert emit(alice, "G1", lease=lease).reason_code is ReasonCode.LEASE_STALE  # fenced by bob's grant
        assert emit(bob, "G1", lease=nxt).status is Outcome.COMMITTED
        assert emit(alice, "H1").status is Outcome.COMMITTED  # an unguarded stream stays optimistic
    assert scalar(settings.require_database(), "SELECT count(*) FROM events WHERE stream = %s",
                  (stream_for("G1"),)) == 2



def test_outcome_listener_memory_is_bounded(database_url: str) -> None:
    from eventstore.postgres.connection import Database
    from eventstore.sdk.listener import OutcomeListener

    listener = OutcomeListener(Database(database_url), "bounded", max_pending=2)
    try:
        ids = [uuid.uuid4() for _ in range(3)]
        futures = [listener.expect(i) for i in ids]
        assert listener.pending == 2
        assert isinstance(futures[0].exception(1), EmitTimeout)  # the oldest was let go, with a reason
        assert not futures[1].done() and not futures[2].done()
        listener.forget(ids[1])
        assert listener.pending == 1
    finally:
        listener.close()


def test_cli_as_an_operator_login_registers_guards_and_rotates(
        settings: Settings, projector: Projector, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from eventstore.cli.main import main

    db = settings.require_database()
    with login_role(db, "eventstore_operator") as operator_url:
        monkeypatch.setenv("EVENTSTORE_DATABASE_URL", operator_url)
        assert main(["agents", "add", "cli-agent", "--streams", "inventory-*"]) == 0
        cred = capsys.readouterr().out.strip().splitlines()[-1]
        assert main(["agents", "list"]) == 0
        assert "cli-agent" in capsys.readouterr().out
        assert main(["resources", "guard", "inventory-Z*"]) == 0
        assert main(["resources", "list"]) == 0
        assert "inventory-Z*" in capsys.readouterr().out
        with AgentClient("cli-agent", settings, credential=cred) as c:
            assert emit(c, "Z1").reason_code is ReasonCode.NO_LEASE
            assert main(["resources", "unguard", "inventory-Z*"]) == 0
            assert emit(c, "Z1").status is Outcome.COMMITTED
            other = c.emit_and_wait(InventoryAdjusted(sku="Z1", delta=1), "orders-1", timeout=30)
            assert other.reason_code is ReasonCode.NOT_PERMITTED
            assert main(["agents", "rotate", "cli-agent"]) == 0
            assert emit(c, "Z1").reason_code is ReasonCode.CREDENTIAL_REVOKED
        assert main(["agents", "remove", "nobody"]) == 1


def test_guarded_writes_and_lease_traffic_run_concurrently_without_deadlock(
        settings: Settings, projector: Projector) -> None:
    """Four agents take turns on one guarded stream through the coordinator (acquire, emit under the
    lease, release) while a rogue agent keeps writing without a lease. Every holder's write commits,
    every rogue write is refused, and PostgreSQL counted no deadlock between projector and coordinator."""
    import threading

    db = settings.require_database()
    stream = stream_for("C1")
    with psycopg.connect(db, autocommit=True) as conn, conn.cursor() as cur:
        agents.guard(cur, "inventory-C*")
    names = [f"worker-{i}" for i in range(4)]
    creds = {n: register(settings, n) for n in [*names, "rogue"]}
    results: dict[str, list[EmitResult]] = {n: [] for n in creds}
    stop = threading.Event()
    errors: list[BaseException] = []

    def worker(name: str, coord: Coordinator) -> None:
        try:
            with AgentClient(name, settings, credential=creds[name]) as c:
                for _ in range(5):
                    with coord.lease(stream, agent_id=name, ttl=10.0, wait=60.0) as lease:
                        results[name].append(emit(c, "C1", lease=lease))
        except BaseException as e:
            errors.append(e)

    def rogue() -> None:
        with AgentClient("rogue", settings, credential=creds["rogue"]) as c:
            while not stop.is_set():
                results["rogue"].append(emit(c, "C1"))

    with Coordinator(settings) as coord:
        threads = [threading.Thread(target=worker, args=(n, coord)) for n in names]
        bad = threading.Thread(target=rogue)
        for t in [*threads, bad]:
            t.start()
        for t in threads:
            t.join(180)
        stop.set()
        bad.join(60)
    assert not errors, errors
    assert all(r.status is Outcome.COMMITTED for n in names for r in results[n]), results
    assert results["rogue"] and all(r.reason_code in (ReasonCode.NOT_HOLDER, ReasonCode.NO_LEASE)
                                    for r in results["rogue"])
    assert scalar(db, "SELECT count(*) FROM events WHERE stream = %s", (stream,)) == 4 * 5
    assert scalar(db, "SELECT count(*) FROM events WHERE stream = %s AND lease_resource IS DISTINCT FROM %s",
                  (stream, stream)) == 0
    time.sleep(1.0)  # statistics reach pg_stat_database when backends flush them
    assert scalar(db, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()") == 0


def test_unsigned_garbage_naming_another_agents_event_tells_that_agent_nothing(
        settings: Settings, projector: Projector, creds: dict[str, Credential]) -> None:
    """An undecodable message naming alice and one of her pending event ids is dead-lettered, but no
    outcome is recorded for alice (before, alice's handle resolved as REJECTED from the table)."""
    from confluent_kafka import Producer

    with AgentClient("alice", settings, credential=creds["alice"]) as alice:
        pending = uuid.uuid4()
        fut = alice._listener.expect(pending)
        forged = {"event_id": str(pending), "agent_id": "alice", "idempotency_key": "k", "type": "Nope"}
        p = Producer({"bootstrap.servers": settings.require_kafka()})
        p.produce(settings.intake_topic, key=b"inventory-X", value=json.dumps(forged).encode())
        assert p.flush(10) == 0
        db = settings.require_database()
        deadline = time.monotonic() + 30
        while scalar(db, "SELECT count(*) FROM dead_letters") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert scalar(db, "SELECT count(*) FROM dead_letters") == 1
        time.sleep(1.5)  # past the listener's re-check interval
        assert not fut.done()
        assert scalar(db, "SELECT count(*) FROM outcomes WHERE event_id = %s", (pending,)) == 0
