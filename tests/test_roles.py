"""Least-privilege database roles (migration 0005), tried as real PostgreSQL login roles: each group
role against what it must not do (permission denied), and the whole write path running with the
least roles (a projector login and an agent login)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from pydantic import SecretStr

from eventstore import AgentClient, Outcome, Projector
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryUpdated, stream_for
from eventstore.postgres import agents
from tests.fix_projector import scalar


@contextlib.contextmanager
def login_role(database_url: str, *groups: str, run_as_group: bool = False) -> Iterator[str]:
    """A fresh LOGIN role that is a member of ``groups``; yields a URL for it on the same database.
    With ``run_as_group`` its sessions run as the (first) group role, so what it creates is the group's."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    password = uuid.uuid4().hex
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
            psycopg.sql.Identifier(name), psycopg.sql.Literal(password),
            psycopg.sql.SQL(", ").join(psycopg.sql.Identifier(g) for g in groups)))
        if run_as_group:
            conn.execute(psycopg.sql.SQL("ALTER ROLE {} SET role = {}").format(
                psycopg.sql.Identifier(name), psycopg.sql.Literal(groups[0])))
    parts = urlsplit(database_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    try:
        yield urlunsplit((parts.scheme, f"{name}:{password}@{host}", parts.path, parts.query, parts.fragment))
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
            conn.execute(psycopg.sql.SQL("DROP OWNED BY {}").format(psycopg.sql.Identifier(name)))
            conn.execute(psycopg.sql.SQL("DROP ROLE {}").format(psycopg.sql.Identifier(name)))


def denied(url: str, statement: str) -> bool:
    """True if PostgreSQL refuses ``statement`` to this role for lack of privilege (SQLSTATE 42501)."""
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            conn.execute(statement)
        except psycopg.errors.InsufficientPrivilege:
            return True
    return False


def allowed(url: str, statement: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)


EVERYONE_DENIED = [
    "UPDATE agents SET status = 'active'",  # the self-revive of the issue
    "INSERT INTO agent_credentials (key_id, agent_id, secret) VALUES ('0000000000000000', 'x', '\\x00')",
    "UPDATE events SET payload = '{}'",
    "DELETE FROM dead_letters",
    "TRUNCATE outcomes",
    "ALTER TABLE events DISABLE TRIGGER events_append_only",
    "ALTER TABLE outcomes DISABLE TRIGGER outcomes_append_only",
    "UPDATE resources SET fence_token = 0",
    "INSERT INTO guarded_streams (pattern) VALUES ('x')",
    "DELETE FROM operator_actions",
    "UPDATE log_head SET position = 0" ,
]


@pytest.mark.parametrize("group", ["eventstore_agent", "eventstore_auditor", "eventstore_operator"])
def test_runtime_roles_cannot_change_history_or_identity(database_url: str, group: str) -> None:
    with login_role(database_url, group) as url:
        for stmt in [*EVERYONE_DENIED, "SELECT secret FROM agent_credentials", "INSERT INTO outcomes "
                     "(event_id, agent_id, status, reason) VALUES (gen_random_uuid(), 'a', 'rejected', 'r')",
                     "CREATE TABLE mine (a int)"]:
            assert denied(url, stmt), f"{group} may run: {stmt}"


def test_agent_role_reads_what_the_sdk_reads_and_cannot_revive_itself(database_url: str) -> None:
    with login_role(database_url, "eventstore_agent") as url:
        for stmt in ("SELECT * FROM events", "SELECT * FROM outcomes", "SELECT * FROM streams",
                     "SELECT position FROM log_head"):
            allowed(url, stmt)
        for stmt in ("SELECT eventstore_revive_agent('mallory')", "SELECT eventstore_register_agent("
                     "'mallory-2', '0000000000000000', '\\x00', NULL, NULL)", "SELECT * FROM agents",
                     "SELECT * FROM lease_holders", "DELETE FROM lease_holders",
                     "INSERT INTO lease_holders VALUES ('r', 'a', 'exclusive', 1, 1, 1, now(), now())"):
            assert denied(url, stmt), stmt


def test_projector_role_writes_the_log_but_cannot_rewrite_it(database_url: str) -> None:
    with login_role(database_url, "eventstore_projector") as url:
        allowed(url, "SELECT secret FROM agent_credentials")  # it checks the HMACs
        for stmt in [*EVERYONE_DENIED[:-1], "SELECT eventstore_revive_agent('mallory')",
                     "DELETE FROM outcomes", "UPDATE agent_credentials SET status = 'active'"]:
            assert denied(url, stmt), stmt


def test_auditor_reads_history_but_no_secret(database_url: str) -> None:
    with login_role(database_url, "eventstore_auditor") as url:
        for stmt in ("SELECT * FROM events", "SELECT * FROM operator_actions", "SELECT * FROM dead_letters",
                     "SELECT key_id, agent_id, status FROM agent_credentials"):
            allowed(url, stmt)
        assert denied(url, "SELECT eventstore_kill_agent('a', 'r')")


def test_operator_acts_through_functions_that_record_who(database_url: str) -> None:
    with login_role(database_url, "eventstore_operator") as url:
        with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
            me = conn.execute("SELECT session_user").fetchone()
            cred = agents.register(cur, "worker", ["orders-*"], None)
            assert agents.rotate(cur, "worker") is not None
            agents.kill(cur, "worker", "test")
            assert agents.revive(cur, "worker")
            agents.guard(cur, "inventory-*")
            assert agents.remove(cur, "worker")
            listed = agents.list_agents(cur)
        assert [a.credential_status for a in listed] == ["revoked"] and cred.key_id != listed[0].key_id
        actions = scalar(database_url, "SELECT array_agg(action ORDER BY id) FROM operator_actions WHERE actor = %s",
                         (me[0] if me else None,))
        assert actions == ["register", "rotate", "kill", "revive", "guard", "remove"]


def test_auditor_verifies_the_chain(settings: Settings) -> None:
    from eventstore.postgres.eventlog import verify_chain

    with login_role(settings.require_database(), "eventstore_auditor") as url, psycopg.connect(url) as conn, \
            conn.cursor() as cur:
        assert verify_chain(cur).ok


def test_coordinator_role_grants_and_kills_but_cannot_rewrite(settings: Settings) -> None:
    from eventstore import Coordinator

    db = settings.require_database()
    with login_role(db, "eventstore_coordinator") as url:
        with Coordinator(url) as coord:
            lease = coord.acquire("r1", agent_id="a1", ttl=5.0)
            assert coord.kill("a1", "test") == ["r1"] and lease.token > 0
            assert coord.revive("a1")
        for stmt in [*EVERYONE_DENIED[1:3], *EVERYONE_DENIED[4:7], "SELECT secret FROM agent_credentials",
                     "SELECT eventstore_register_agent('x', '0000000000000000', '\\x00', NULL, NULL)"]:
            assert denied(url, stmt), stmt
    assert scalar(db, "SELECT count(*) FROM lock_events WHERE type = 'AgentKilled'") == 1


def test_write_path_runs_with_the_least_roles(settings: Settings) -> None:
    """A projector logged in as an eventstore_projector member and an agent logged in as an
    eventstore_agent member: an event commits, its outcome reaches the agent, the agent reads it back."""
    db = settings.require_database()
    with psycopg.connect(db, autocommit=True) as conn, conn.cursor() as cur:
        cred = agents.register(cur, "least")
    with login_role(db, "eventstore_projector", run_as_group=True) as purl, \
            login_role(db, "eventstore_agent") as aurl:
        with Projector(settings.replace(database_url=SecretStr(purl))) as projector, \
                AgentClient("least", settings.replace(database_url=SecretStr(aurl)), credential=cred) as c:
            projector.ready.wait(30)
            r = c.emit_and_wait(InventoryUpdated(sku="L1", quantity=4), stream_for("L1"), timeout=30)
            assert r.status is Outcome.COMMITTED
            assert [e.version for e in c.read_stream(stream_for("L1"))] == [1]
            allowed(aurl, "SELECT quantity FROM inventory")  # read models are readable by agents
        projector.raise_if_failed()
