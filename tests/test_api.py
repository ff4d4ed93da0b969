"""The HTTP API on real servers: every role denied what it may not do, bad inputs refused with the
reason, the operator's kill switch recorded, readiness, health and metrics."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest

from eventstore import AgentClient, Outcome, Projector, ReasonCode
from eventstore.api.server import ServerThread
from eventstore.cli.main import main
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryAdjusted, InventoryUpdated, stream_for
from eventstore.postgres import tokens
from tests.app_events import DocumentTitled
from tests.fix_api import Api
from tests.fix_projector import scalar, wait_until

READS = ["/api/history", "/api/events/tail", "/api/writers", "/api/check", "/api/agents", "/api/leases",
         "/api/lag"]
ACTS: list[tuple[str, dict[str, Any] | None]] = [
    ("/api/agents/some-agent/kill", {"reason": "test"}), ("/api/agents/some-agent/revive", None),
    ("/api/leases/inventory:X/release?agent_id=some-agent", None)]


def test_every_role_is_denied_what_it_may_not_do(api: Api, settings: Settings) -> None:
    with httpx.Client(base_url=api.url, timeout=30) as http:
        for path in READS:
            assert http.get(path).status_code == 401, path
            assert http.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401, path
            assert http.get(path, headers={"Authorization": "Basic abc"}).status_code == 401, path
            assert http.get(path, headers=api.headers(api.auditor)).status_code == 200, path
            assert http.get(path, headers=api.headers(api.operator)).status_code == 200, path
        for path, body in ACTS:
            assert http.post(path, json=body).status_code == 401, path
            r = http.post(path, json=body, headers=api.headers(api.auditor))
            assert r.status_code == 403 and "auditor" in r.json()["detail"], path
        # A revoked operator token is refused like an unknown one.
        with psycopg.connect(settings.require_database(), autocommit=True) as conn:
            assert tokens.revoke(conn, "olga-operator")
        r = http.post(ACTS[0][0], json=ACTS[0][1], headers=api.headers(api.operator))
        assert r.status_code == 401
    # Nothing was killed by the refused calls.
    assert scalar(settings.require_database(), "SELECT count(*) FROM agents WHERE status = 'killed'") == 0


def test_tokens_are_stored_hashed(api: Api, settings: Settings) -> None:
    with psycopg.connect(settings.require_database()) as conn:
        stored = [bytes(r[0]) for r in conn.execute("SELECT token_sha256 FROM api_tokens").fetchall()]
    assert tokens.digest(api.auditor) in stored
    assert all(api.auditor.encode() not in s and api.operator.encode() not in s for s in stored)


@pytest.mark.parametrize("query, reason", [
    ("limit=100000", "limit"), ("limit=0", "limit"), ("from_position=-1", "from_position"),
    ("from_position=9&to_position=3", "below"), ("from_position=99999999999999999999", "from_position"),
    ("correlation=not-a-uuid", "UUID"), ("since=yesterday", "ISO 8601"), ("after=garbage!", "cursor"),
    ("since=2026-01-01T00:00:00", "time zone"), ("agent=a%00b", "agent"),
    ("since=1000-01-01T00:00:00%2B00:00&until=2026-01-01T00:00:00%2B00:00", "narrow"),
])
def test_bad_history_inputs_get_4xx_with_the_reason(api: Api, query: str, reason: str) -> None:
    r = httpx.get(f"{api.url}/api/history?{query}", headers=api.headers(api.auditor), timeout=30)
    assert r.status_code == 422, r.text
    assert reason in str(r.json()["detail"])


def test_bad_operator_inputs_get_4xx(api: Api) -> None:
    h = api.headers(api.operator)
    with httpx.Client(base_url=api.url, timeout=30, headers=h) as http:
        assert http.post("/api/agents/x/kill", json={}).status_code == 422  # no reason
        assert http.post("/api/agents/x/kill", json={"reason": ""}).status_code == 422
        assert http.post("/api/agents/a%01b/kill", json={"reason": "r"}).status_code == 422
        assert http.post(f"/api/agents/{'a' * 300}/kill", json={"reason": "r"}).status_code == 422
        assert http.post("/api/agents/never-seen/revive").status_code == 404
        assert http.post("/api/leases/r/release").status_code == 422  # agent_id missing
        assert http.get("/api/events/tail?after_position=-5").status_code == 422


def test_operator_kills_and_revives_and_history_shows_it(api: Api, settings: Settings, projector: Projector) -> None:
    h = api.headers(api.operator)
    with AgentClient("rogue", settings) as rogue, httpx.Client(base_url=api.url, timeout=30, headers=h) as http:
        assert rogue.emit_and_wait(InventoryUpdated(sku="K1", quantity=3), stream_for("K1")).ok
        agents = {a["agent_id"]: a for a in http.get("/api/agents").json()["agents"]}
        assert agents["rogue"]["status"] == "active"
        r = http.post("/api/agents/rogue/kill", json={"reason": "runaway loop"})
        assert r.status_code == 200, r.text
        assert rogue.emit_and_wait(InventoryAdjusted(sku="K1", delta=1), stream_for("K1")).status is Outcome.REJECTED
        agents = {a["agent_id"]: a for a in http.get("/api/agents").json()["agents"]}
        assert agents["rogue"]["status"] == "killed"
        hist = http.get("/api/history", params={"stream": "agent-rogue"}).json()["events"]
        assert hist[0]["type"] == "AgentKilled" and "olga-operator" in hist[0]["payload"]["reason"]
        around = http.get("/api/history", params={"stream": stream_for("K1")}).json()["events"][0]["outcomes"]
        assert [(o["status"], o["reason_code"]) for o in around] == [("rejected", "agent_killed")]
        assert http.post("/api/agents/rogue/revive").status_code == 200
        assert rogue.emit_and_wait(InventoryAdjusted(sku="K1", delta=1), stream_for("K1")).ok


def test_operator_releases_a_lease(api: Api, settings: Settings) -> None:
    from eventstore import Coordinator

    with Coordinator(settings) as coord, httpx.Client(base_url=api.url, timeout=30,
                                                      headers=api.headers(api.operator)) as http:
        lease = coord.acquire("inventory:R1", agent_id="stuck-agent", ttl=300)
        holders = http.get("/api/leases").json()["holders"]
        assert [(x["resource"], x["agent_id"], x["token"]) for x in holders] == [
            ("inventory:R1", "stuck-agent", lease.token)]
        r = http.post("/api/leases/inventory:R1/release", params={"agent_id": "stuck-agent"})
        assert r.json()["released"] is True
        assert http.get("/api/leases").json()["holders"] == []
        again = http.post("/api/leases/inventory:R1/release", params={"agent_id": "stuck-agent"}).json()
        assert again["released"] is False


def test_health_readiness_and_metrics(api: Api, settings: Settings, projector: Projector) -> None:
    with AgentClient("m-agent", settings) as c:
        assert c.emit_and_wait(InventoryUpdated(sku="M1", quantity=1), stream_for("M1")).ok
        assert c.emit_and_wait(InventoryAdjusted(sku="M1", delta=1), stream_for("M1"), expected_version=0).status \
            is Outcome.CONFLICT
    with httpx.Client(base_url=api.url, timeout=30) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        wait_until(lambda: http.get("/readyz").status_code == 200, 30, "readiness")
        text = http.get("/metrics").text
    for needle in ('eventstore_outcomes_total{code="version_conflict",status="conflict"} 1.0',
                   "eventstore_projector_batch_messages_bucket", "eventstore_projector_commit_seconds_count",
                   'eventstore_projector_lag_messages{partition="0"} 0.0', "eventstore_log_head_position 1.0",
                   'eventstore_http_requests_total{method="GET",route="/readyz",status="200"}',
                   'eventstore_lease_events_total{type="LeaseGranted"} 0.0', "eventstore_database_up 1.0",
                   "eventstore_publisher_lag_events"):
        assert needle in text, needle


def test_not_ready_while_the_projector_lags(settings: Settings) -> None:
    """Messages on the intake topic and no projector: /readyz says 503 and why."""
    with AgentClient("early", settings) as c:
        # Several partitions: tansu 0.6 reports a high watermark of (base offset of the last batch + 1),
        # so a batch of messages to one partition shows as a lag of 1.
        for i in range(8):
            c.emit(InventoryUpdated(sku=f"N{i}", quantity=i), stream_for(f"N{i}"))
    strict = settings.replace(ready_max_intake_lag=0)
    server = ServerThread(strict).start()
    try:
        r = httpx.get(f"{server.url}/readyz", timeout=30)
    finally:
        server.stop()
    assert r.status_code == 503
    assert "behind the intake topic" in " ".join(r.json()["reasons"])


def test_token_cli(settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EVENTSTORE_DATABASE_URL", settings.require_database())
    assert main(["tokens", "add", "ci-bot", "--role", "auditor"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    with psycopg.connect(settings.require_database()) as conn:
        assert tokens.lookup(conn, token) == tokens.TokenInfo("ci-bot", "auditor")
    assert main(["tokens", "add", "ci-bot", "--role", "operator"]) == 3  # exists already
    assert main(["tokens", "list"]) == 0
    assert "ci-bot" in capsys.readouterr().out
    assert main(["tokens", "revoke", "ci-bot"]) == 0
    assert main(["tokens", "revoke", "ci-bot"]) == 1
    with psycopg.connect(settings.require_database()) as conn:
        assert tokens.lookup(conn, token) is None



def test_operator_guards_a_stream_pattern_and_the_projector_enforces_it(api: Api, settings: Settings,
                                                                        projector: Projector) -> None:
    """POST /api/guards (operator only) makes a lease mandatory on matching streams; the auditor can
    list guards but not change them; DELETE lifts it again."""
    with httpx.Client(base_url=api.url, timeout=30) as http, AgentClient("guarded-writer", settings) as c:
        denied = http.post("/api/guards", json={"pattern": "vault-*"}, headers=api.headers(api.auditor))
        assert denied.status_code == 403
        assert http.post("/api/guards", json={"pattern": ""}, headers=api.headers(api.operator)).status_code == 422
        r = http.post("/api/guards", json={"pattern": "vault-*"}, headers=api.headers(api.operator))
        assert r.status_code == 200 and r.json()["resource"] == "{stream}", r.text
        listed = http.get("/api/guards", headers=api.headers(api.auditor)).json()["guards"]
        assert {"pattern": "vault-*", "resource": "{stream}"} in listed
        refused = c.emit_and_wait(DocumentTitled(doc="v", title="t"), "vault-1")
        assert (refused.status, refused.reason_code) == (Outcome.REJECTED, ReasonCode.NO_LEASE)
        gone = http.delete("/api/guards", params={"pattern": "vault-*"}, headers=api.headers(api.operator))
        assert gone.status_code == 200
        assert http.delete("/api/guards", params={"pattern": "vault-*"},
                           headers=api.headers(api.operator)).status_code == 404
        nul = http.delete("/api/guards", params={"pattern": "vault-\x00"}, headers=api.headers(api.operator))
        assert nul.status_code == 422 and "control characters" in nul.json()["detail"], nul.text
        assert c.emit_and_wait(DocumentTitled(doc="v", title="t"), "vault-1").ok
