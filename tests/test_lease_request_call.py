"""``eventstore_lease_request`` (migration 0011) must decide exactly as 0009's one-call grant followed by 0010's
one-call queueing, which it replaces on the first request: every situation below is set up once, run through
the two old calls and (rolled back) through the new one, and the results and the rows they wrote compared."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from eventstore.core.lockrules import key_of
from eventstore.postgres.lease_sql import ADVISORY_NS

Setup = Callable[[psycopg.Cursor[Any]], None]


def holder(agent: str, resource: str = "r", *, expired: bool = False, mode: str = "exclusive") -> Setup:
    def setup(cur: psycopg.Cursor[Any]) -> None:
        cur.execute("INSERT INTO lease_holders (resource, agent_id, mode, token, ttl_seconds, granted_at, expires_at) "
                    "VALUES (%s, %s, %s, nextval('fencing_tokens'), 30, clock_timestamp(), clock_timestamp() + "
                    "make_interval(secs => %s))", (resource, agent, mode, -5.0 if expired else 30.0))
    return setup


def waiter(agent: str, *, stale: bool = False, mode: str = "exclusive") -> Setup:
    def setup(cur: psycopg.Cursor[Any]) -> None:
        cur.execute("INSERT INTO lease_waiters (resource, agent_id, mode, enqueued_at, heartbeat_at, ttl_seconds) "
                    "VALUES ('r', %s, %s, clock_timestamp(), clock_timestamp() - make_interval(secs => %s), 30)",
                    (agent, mode, 60.0 if stale else 0.0))
    return setup


def killed(agent: str) -> Setup:
    def setup(cur: psycopg.Cursor[Any]) -> None:
        cur.execute("UPDATE agents SET status = 'killed', reason = 'test' WHERE agent_id = %s", (agent,))
    return setup


CASES: dict[str, tuple[list[Setup], str, bool]] = {
    # name: (setup, mode, check_order)
    "free": ([], "exclusive", True),
    "free, shared": ([], "shared", True),
    "free, the agent heads the queue": ([waiter("a"), waiter("b")], "exclusive", True),
    "free, another agent heads the queue": ([waiter("b"), waiter("a")], "exclusive", True),
    "free, another agent queued, agent not": ([waiter("b")], "exclusive", True),
    "held by another": ([holder("b")], "exclusive", True),
    "held by another, queue behind": ([holder("b"), waiter("c")], "exclusive", True),
    "held, shared request": ([holder("b")], "shared", True),
    "held by the agent": ([holder("a")], "exclusive", True),
    "expired holder": ([holder("b", expired=True)], "exclusive", True),
    "stale waiter": ([holder("b"), waiter("c", stale=True)], "exclusive", True),
    "agent already queued": ([holder("b"), waiter("a")], "exclusive", True),
    "agent holds another lease, order checked": ([holder("a", "other"), holder("b")], "exclusive", True),
    "agent holds another lease, order not checked": ([holder("a", "other"), holder("b")], "exclusive", False),
    "agent holds another lease, free, order checked": ([holder("a", "other")], "exclusive", True),
    "killed agent, free": ([killed("a")], "exclusive", True),
    "killed agent, busy": ([killed("a"), holder("b")], "exclusive", True),
}

STATE = """
SELECT (SELECT coalesce(json_agg(json_build_array(agent_id, mode, hold_count) ORDER BY agent_id), '[]')
        FROM lease_holders WHERE resource = 'r')::text,
       (SELECT coalesce(json_agg(json_build_array(agent_id, mode, ttl_seconds, expected_seconds) ORDER BY seq), '[]')
        FROM lease_waiters WHERE resource = 'r')::text,
       (SELECT coalesce(json_agg(json_build_array(type, agent_id, payload::jsonb - 'waited_seconds' - 'token')
                                 ORDER BY chain_seq), '[]') FROM lock_events)::text
"""


def run_old(cur: psycopg.Cursor[Any], mode: str, check: bool) -> tuple[Any, ...]:
    args = ("r", "a", mode, 30.0, ADVISORY_NS, key_of("r"), check)
    granted = cur.execute("SELECT out_token IS NOT NULL FROM eventstore_lease_grant_free(%s, %s, %s, %s, %s, %s, %s)",
                          args).fetchone()
    if granted is not None:
        return ("granted",)
    queued = cur.execute("SELECT out_held_by FROM eventstore_lease_queue(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                         (*args, 7.0, 5.0)).fetchone()
    return ("queued", queued[0]) if queued is not None else ("nothing",)


def run_new(cur: psycopg.Cursor[Any], mode: str, check: bool) -> tuple[Any, ...]:
    row = cur.execute("SELECT out_token, out_held_by, out_seq "
                      "FROM eventstore_lease_request(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                      ("r", "a", mode, 30.0, ADVISORY_NS, key_of("r"), check, 7.0, 5.0)).fetchone()
    if row is None:
        return ("nothing",)
    if row[0] is not None:
        return ("granted",)
    place = cur.execute("SELECT seq FROM lease_waiters WHERE resource = 'r' AND agent_id = 'a'").fetchone()
    assert place is not None and row[2] == place[0], "the queue place returned is the row written"
    return ("queued", row[1])


def test_the_first_request_call_decides_as_the_two_calls_did(database_url: str) -> None:
    differ: dict[str, tuple[Any, Any]] = {}
    outcomes: set[str] = set()
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        for name, (setups, mode, check) in CASES.items():
            for agent in ("a", "b", "c"):
                cur.execute("INSERT INTO agents (agent_id) VALUES (%s) ON CONFLICT DO NOTHING", (agent,))
            for setup in setups:
                setup(cur)
            cur.execute("SAVEPOINT before")
            old = run_old(cur, mode, check), cur.execute(STATE).fetchone()
            cur.execute("ROLLBACK TO SAVEPOINT before")
            new = run_new(cur, mode, check), cur.execute(STATE).fetchone()
            conn.rollback()  # the next situation starts from an empty database again
            if new != old:
                differ[name] = (old, new)
            outcomes.add(old[0][0])
    assert not differ
    assert outcomes == {"granted", "queued", "nothing"}  # the situations reach every decision
