"""Migration 0014 (one grant body, one notice MAC) changes no behaviour and no privilege.

The same sequence of lease calls (free grants, queueing, signed hand-offs, a killed head, a check of the lock
order, an inactive agent) runs on a database at 0013 and on one at 0014: every answer, every lock event
and every notice must be the same (timings and the random notice key aside; each notice's MAC is checked
under its own database's key). The shared functions may be run by the coordinator role only, and the
downgrade restores 0013's functions exactly (definitions and privileges).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from eventstore.coordination import Coordinator
from eventstore.postgres.lease_sql import ADVISORY_NS
from eventstore.postgres.migrate import upgrade
from tests.fix_servers import Servers, with_dbname
from tests.test_lock_chain import _alembic
from tests.test_roles import denied, login_role

TIMINGS = ("waited_seconds", "held_seconds", "enqueued_at")


def _new_database(servers: Servers, prefix: str) -> Iterator[str]:
    """A new, empty database (not the migrated template), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(servers.database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_dbname(servers.database_url, name)
    finally:
        with psycopg.connect(servers.database_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fresh_db(servers: Servers) -> Iterator[str]:
    yield from _new_database(servers, "es_0014")


@pytest.fixture
def second_db(servers: Servers) -> Iterator[str]:
    yield from _new_database(servers, "es_0013")


def scenario(url: str) -> list[Any]:
    """Run the lease calls and return what can be compared across databases: answers, lock events, notices."""
    seen: list[Any] = []
    with psycopg.connect(url, autocommit=True) as conn, psycopg.connect(url, autocommit=True) as ear:
        ear.execute("LISTEN eventstore_leases")
        key = bytes(conn.execute("SELECT key FROM lease_notice_key").fetchone()[0])  # type: ignore[index]
        conn.execute("INSERT INTO agents (agent_id) SELECT unnest(%s::text[])", (list("abcdefgh"),))

        def call(fn: str, *args: Any) -> list[Any]:
            cols = {"grant_free": "r, a, m, ttl, ns, k, ord", "request": "r, a, m, ttl, ns, k, ord, exp, stale",
                    "release_signed": "r, a, t, ns, k, stale"}[fn]
            sql = f"SELECT * FROM eventstore_lease_{fn}({', '.join('%s' for _ in cols.split(','))})"
            rows = [list(r) for r in conn.execute(sql, args).fetchall()]
            for row in rows:  # expiry and seconds waited / held are timings: keep only what they are
                for i, v in enumerate(row):
                    if isinstance(v, float):
                        row[i] = "zero" if v == 0 else "positive" if v > 0 else v
                    elif hasattr(v, "tzinfo"):
                        row[i] = "time"
            seen.append((fn, args[:3], rows))
            return rows

        def free(r: str, a: str, check: bool = False) -> list[Any]:
            return call("grant_free", r, a, "exclusive", 5.0, ADVISORY_NS, 1, check)

        def request(r: str, a: str, check: bool = False) -> list[Any]:
            return call("request", r, a, "exclusive", 5.0, ADVISORY_NS, 1, check, 1.0, 5.0)

        def release(r: str, a: str, token: int) -> list[Any]:
            return call("release_signed", r, a, token, ADVISORY_NS, 1, 5.0)

        (tok_a, *_), = request("r1", "a")  # free: granted
        assert request("r1", "b") and request("r1", "c")  # queued behind a, then b
        assert free("r1", "b") == []  # held: nothing
        assert release("r1", "a", tok_a)  # handed to b (signed notice)
        tok_b = conn.execute("SELECT token FROM lease_holders WHERE resource = 'r1'").fetchone()[0]  # type: ignore[index]
        assert release("r1", "b", tok_b)  # handed to c
        tok_c = conn.execute("SELECT token FROM lease_holders WHERE resource = 'r1'").fetchone()[0]  # type: ignore[index]
        assert release("r1", "c", tok_c)  # nobody waits
        (tok_d, *_), = request("r2", "d")
        assert request("r2", "e")  # queued behind d
        conn.execute("UPDATE agents SET status = 'killed' WHERE agent_id = 'e'")
        assert release("r2", "d", tok_d)  # the head is not active: no hand-off, a wake-up
        assert free("r2", "e") == []  # the head is not active: nothing granted, nothing written
        conn.execute("UPDATE agents SET status = 'active' WHERE agent_id = 'e'")
        assert free("r2", "e")  # the head, active again: granted, its wait chained
        assert free("r3", "f")  # free, nobody queued
        assert request("r4", "f", True) == []  # holds r3 while the order is checked: the full step decides
        assert request("r4", "zz") == []  # no such active agent
        seen.append(("queue", conn.execute("SELECT resource, agent_id, held_by FROM lease_waiters "
                                           "ORDER BY seq").fetchall()))
        seen.append(("holders", conn.execute("SELECT resource, agent_id, mode, token, hold_count, handoff "
                                             "FROM lease_holders ORDER BY resource").fetchall()))
        for type_, agent, resource, token, payload in conn.execute(
                "SELECT type, agent_id, lease_resource, fencing_token, payload FROM lock_events ORDER BY chain_seq"):
            body = {k: v for k, v in json.loads(payload).items() if k not in TIMINGS}
            seen.append(("event", type_, agent, resource, token, body))
        for note in ear.notifies(timeout=0):
            parts = note.payload.split("\x1f")
            if len(parts) == 7:  # a signed hand-off: its MAC under this database's key, then the stable fields
                signed = note.payload[:note.payload.rindex("\x1f")]
                assert hmac.compare_digest(parts[6], hmac.new(key, signed.encode(), hashlib.sha256).hexdigest())
                parts = [parts[0], parts[1], parts[2], parts[5], "signed"]
            seen.append(("notice", parts))
    return seen


def test_0014_answers_writes_and_notifies_exactly_as_0013(fresh_db: str, second_db: str) -> None:
    upgrade(second_db, "0013")
    upgrade(fresh_db)
    before, after = scenario(second_db), scenario(fresh_db)
    assert after == before
    assert [s[1] for s in after if s[0] == "event"].count("LeaseWaited") == 3  # two hand-offs, one grant
    assert sum(1 for s in after if s[0] == "notice" and s[1][-1] == "signed") == 2


def _lease_functions(url: str) -> dict[str, tuple[str, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid), coalesce(p.proacl::text, '')"
                            " FROM pg_proc p WHERE p.proname LIKE 'eventstore_lease%'").fetchall()
    return {name: (body, acl) for name, body, acl in rows}


def test_0014_downgrades_to_0013s_functions_and_upgrades_again(fresh_db: str) -> None:
    upgrade(fresh_db, "0013")
    at_0013 = _lease_functions(fresh_db)
    upgrade(fresh_db)
    at_0014 = _lease_functions(fresh_db)
    body = {name.split("(")[0]: b for name, (b, _) in at_0014.items()}
    for fn in ("eventstore_lease_grant_free", "eventstore_lease_request"):  # the grant is written once
        assert "eventstore_lease_grant(" in body[fn] and "INSERT INTO lease_holders" not in body[fn], fn
    live = {n: b for n, b in body.items() if not n.endswith(("_0011", "_0013"))}  # renamed copies are dead code
    grants = [n for n, b in live.items() if "INSERT INTO lease_holders AS h (resource, agent_id, mode, token, "
              "ttl_seconds, granted_at, expires_at)\n" in b]
    assert grants == ["eventstore_lease_grant"]
    assert "eventstore_lease_notice_mac(body)" in body["eventstore_lease_release_signed"]
    assert "sha256" not in body["eventstore_lease_release_signed"]
    _alembic(fresh_db, "downgrade", "0013")
    assert _lease_functions(fresh_db) == at_0013
    upgrade(fresh_db)
    assert _lease_functions(fresh_db) == at_0014
    with Coordinator(fresh_db) as c:
        c.acquire("after-roundtrip", agent_id="x", ttl=5, wait=0).release()


@pytest.mark.parametrize("group", ["eventstore_agent", "eventstore_projector", "eventstore_auditor",
                                   "eventstore_operator"])
def test_only_the_coordinator_runs_the_shared_lease_functions(database_url: str, group: str) -> None:
    with login_role(database_url, group) as url:
        assert denied(url, "SELECT eventstore_lease_notice_mac('forged')")
        assert denied(url, "SELECT * FROM eventstore_lease_grant('r', 'a', 'exclusive', 5, false)")


def test_the_coordinator_signs_with_the_key_and_cannot_run_0013s_copies(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        key = bytes(conn.execute("SELECT key FROM lease_notice_key").fetchone()[0])  # type: ignore[index]
    with login_role(database_url, "eventstore_coordinator") as url, psycopg.connect(url) as conn:
        (mac,) = conn.execute("SELECT eventstore_lease_notice_mac(%s)", ("r\x1fa\x1f1",)).fetchone()  # type: ignore[misc]
        assert mac == hmac.new(key, b"r\x1fa\x1f1", hashlib.sha256).hexdigest()
    with login_role(database_url, "eventstore_coordinator") as url:
        assert denied(url, "SELECT * FROM eventstore_lease_grant_free_0013('r', 'a', 'exclusive', 5, 1, 1, false)")
        assert denied(url, "SELECT * FROM eventstore_lease_release_signed_0013('r', 'a', 1, 1, 1, 5)")
