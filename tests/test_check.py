"""The readiness check: each control failing and passing on a real deployment (its own database),
the CLI's lines and exit status, and the pure rules against their thresholds."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from eventstore import AgentClient, Coordinator, Projector
from eventstore.cli.main import main
from eventstore.core.checks import CheckLine, Evidence, evaluate, lock_order_let_through
from eventstore.core.errors import LockOrderViolation
from eventstore.core.records import DirectEvent
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryAdjusted, InventoryUpdated, stream_for
from eventstore.postgres import eventlog
from eventstore.postgres.evidence import gather

HOOK = "https://alerts.example.invalid/hook/secret-path"


def lines(settings: Settings, url: str | None = None) -> dict[str, CheckLine]:
    with psycopg.connect(url or settings.require_database(), autocommit=True) as conn:
        return {ln.control: ln for ln in evaluate(gather(conn, settings), settings)}


def failing(found: dict[str, CheckLine]) -> set[str]:
    return {c for c, ln in found.items() if not ln.ok}


def test_empty_deployment_fails_what_it_lacks(settings: Settings) -> None:
    found = lines(settings)
    assert failing(found) == {"Shared resources mapped", "Committed-event subscriptions", "Deadlock alerting"}
    assert found["History"].detail == "chain verified to position 0"
    assert found["Kill switch"].detail == "reachable, 0 agents killed"


def test_a_good_deployment_passes_every_control(settings: Settings, projector: Projector,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    good = settings.replace(alert_webhook=HOOK)
    with AgentClient("order-agent", good) as orders, AgentClient("feed-agent", good) as feed, \
            Coordinator(good) as coord:
        assert feed.emit_and_wait(InventoryUpdated(sku="G1", quantity=5), stream_for("G1"), idempotency_key="f1").ok
        with coord.lease("inventory:G1", agent_id="order-agent", ttl=30) as lease:
            assert orders.emit_and_wait(InventoryAdjusted(sku="G1", delta=-2), stream_for("G1"),
                                        idempotency_key="o1", lease=lease).ok
        with pytest.raises(LockOrderViolation), coord.lease("b-res", agent_id="order-agent"):
            coord.acquire("a-res", agent_id="order-agent")
    time.sleep(0.5)  # the publisher catches up with the log head
    found = lines(good)
    assert failing(found) == set(), {c: ln.detail for c, ln in found.items()}
    assert found["Shared resources mapped"].detail == "1 resources, 2 agents with write access"
    assert found["Global lock order enforced"].detail == "0 violations let through, 1 refused"
    assert "default 30 s" in found["Leases with TTL"].detail
    assert "alerts.example.invalid" in found["Deadlock alerting"].detail and "secret" not in \
        found["Deadlock alerting"].detail
    # The CLI: one line per control, the result, exit 0; JSON with the evidence.
    monkeypatch.setenv("EVENTSTORE_DATABASE_URL", good.require_database())
    monkeypatch.setenv("EVENTSTORE_ALERT_WEBHOOK", HOOK)
    assert main(["check"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 10 and all(x.startswith("✓") for x in out[:9]) and out[9] == "Result: all controls pass"
    assert main(["check", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and doc["evidence"]["lease_grants"] >= 2


def test_each_control_fails_on_the_evidence(settings: Settings, projector: Projector) -> None:
    db = settings.require_database()
    with AgentClient("data_enricher", settings) as enricher:
        for i in range(3):  # no idempotency key: the SDK uses the event id
            assert enricher.emit_and_wait(InventoryAdjusted(sku="E1", delta=i), stream_for("E1")).ok
    with Coordinator(settings, enforce_lock_order=False) as loose:
        with loose.lease("z-res", agent_id="greedy"):
            loose.acquire("a-res", agent_id="greedy", ttl=7200)  # out of order and a two-hour TTL
        loose.kill("greedy", "test")
    found = lines(settings)
    assert found["Idempotency"].detail == 'agent "data_enricher" emitted 3 events without an idempotency key'
    assert found["Global lock order enforced"].detail == "1 violations let through, 0 refused"
    assert not found["Leases with TTL"].ok and "longest 7,200 s" in found["Leases with TTL"].detail
    assert not found["Deadlock alerting"].ok and "no alert sink configured" in found["Deadlock alerting"].detail
    assert found["Kill switch"].ok and found["Kill switch"].detail == "reachable, 1 agents killed"
    # A read-model row the log does not explain (written around the projector).
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE inventory SET quantity = quantity + 100 WHERE sku = 'E1'")
        conn.execute("INSERT INTO inventory (sku, quantity, version) VALUES ('ghost', 1, 1)")
    found = lines(settings)
    assert not found["Writes go through the projector"].ok
    assert found["Writes go through the projector"].detail.startswith("2 read-model rows not explained by the log")
    # A killed agent that still holds a lease (a coordinator bypassed): the kill switch did not hold.
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("INSERT INTO lease_holders (resource, agent_id, mode, token, ttl_seconds, granted_at, "
                     "expires_at) VALUES ('x', 'greedy', 'exclusive', 999, 30, now(), now() + interval '30 s')")
    assert lines(settings)["Kill switch"].detail == "killed agents still hold leases: greedy"


def test_publisher_lag_and_a_tampered_history_fail(settings: Settings, projector: Projector,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    db = settings.require_database()
    with AgentClient("a", settings) as c:
        assert c.emit_and_wait(InventoryUpdated(sku="P1", quantity=1), stream_for("P1"), idempotency_key="p").ok
    projector.stop()  # its publisher stops too: later appends are not published
    with psycopg.connect(db) as conn, conn.transaction(), conn.cursor() as cur:
        eventlog.append_direct(cur, [DirectEvent(stream="notes-1", agent_id="ops",
                                                 event=InventoryUpdated(sku="x", quantity=1))])
    time.sleep(0.3)
    found = lines(settings.replace(check_max_lag_seconds=0.1))
    assert not found["Committed-event subscriptions"].ok
    assert "1 events behind" in found["Committed-event subscriptions"].detail
    with psycopg.connect(db, autocommit=True) as conn:  # the database owner rewrites history
        conn.execute("ALTER TABLE events DISABLE TRIGGER events_append_only")
        conn.execute("UPDATE events SET agent_id = 'someone-else' WHERE position = 1")
        conn.execute("ALTER TABLE events ENABLE TRIGGER events_append_only")
    found = lines(settings)
    assert not found["History"].ok and "position" in found["History"].detail
    monkeypatch.setenv("EVENTSTORE_DATABASE_URL", db)
    assert main(["check"]) == 4
    out = capsys.readouterr().out
    assert "✗ History: chain broken" in out and "issues found" in out


def test_kill_switch_unreachable_for_a_read_only_connection(settings: Settings, database_url: str) -> None:
    role = f"reader_{int(time.time() * 1000) % 10**9}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    parts = urlsplit(database_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    url = urlunsplit((parts.scheme, f"{role}@{host}", parts.path, parts.query, ""))
    try:
        found = lines(settings, url)
        assert not found["Kill switch"].ok and "nobody can kill" in found["Kill switch"].detail
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


@pytest.mark.parametrize("field, value, control", [
    ("resources", 0, "Shared resources mapped"), ("model_mismatches", ["x"], "Writes go through the projector"),
    ("max_ttl", 4000.0, "Leases with TTL"), ("order_let_through", 1, "Global lock order enforced"),
    ("unkeyed_by_agent", {"a": 1}, "Idempotency"), ("publishers", {}, "Committed-event subscriptions"),
    ("publisher_lag_seconds", 61.0, "Committed-event subscriptions"), ("alert_sink", None, "Deadlock alerting"),
    ("kill_switch_reachable", False, "Kill switch"), ("killed_holding", ["a"], "Kill switch"),
    ("chain_ok", False, "History"),
])
def test_rules_fail_exactly_one_control(field: str, value: Any, control: str) -> None:
    base = Evidence(resources=1, writer_agents=1, models_checked=["inventory"], lease_grants=1, default_ttl=30.0,
                    max_ttl=30.0, publishers={"p": 0}, publisher_lag_seconds=0.0, alert_sink="https://h",
                    kill_switch_reachable=True, chain_ok=True)
    s = Settings()
    assert all(ln.ok for ln in evaluate(base, s))
    setattr(base, field, value)
    assert [ln.control for ln in evaluate(base, s) if not ln.ok] == [control]


def test_lock_order_replay() -> None:
    rows = [("LeaseGranted", "a", "b-res", 1), ("LeaseGranted", "a", "a-res", 2),  # a-res while b-res held
            ("LeaseGranted", "b", "a-res", 3),  # another agent: no violation
            ("LeaseReleased", "a", "b-res", 1), ("LeaseGranted", "a", "a-res", 2),  # re-entry after release
            ("LeaseGranted", "a", "z-res", 4), ("LeaseExpired", "a", "z-res", 9),  # wrong token: still held
            ("LeaseGranted", "a", "c-res", 5),  # z-res still held by a: violation
            ("LeaseRevoked", "a", "z-res", 4), ("LeaseGranted", "a", "d-res", 6)]  # z revoked: d after c is fine
    assert lock_order_let_through(rows) == 2
    assert lock_order_let_through([]) == 0


def test_thresholds_come_from_settings() -> None:
    e = Evidence(resources=1, unkeyed_by_agent={"a": 5}, max_ttl=100.0, lease_grants=1, default_ttl=100.0)
    relaxed = Settings(check_max_unkeyed_events=5, check_max_lease_ttl_seconds=100)
    strict = Settings(check_max_unkeyed_events=4, check_max_lease_ttl_seconds=99)
    ok = {ln.control: ln.ok for ln in evaluate(e, relaxed)}
    bad = {ln.control: ln.ok for ln in evaluate(e, strict)}
    assert ok["Idempotency"] and ok["Leases with TTL"]
    assert not bad["Idempotency"] and not bad["Leases with TTL"]
