"""The PostgreSQL door (eventstore.postgres.connection): LISTEN with reconnection, against a real server."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from eventstore.postgres.connection import Connection, Database
from tests.fix_projector import wait_until


@pytest.mark.parametrize("idle_socket", [False, True], ids=["timed-wait", "poll"])
def test_listen_survives_a_killed_connection(database_url: str, idle_socket: bool) -> None:
    """LISTEN goes on after its backend is terminated: a new connection listens again (and calls
    on_listening, so the caller re-reads what it may have missed), with psycopg's timed wait and with the
    poll(2) wait the SDK's outcome listener and the lease listener use (the dead socket reads as readable,
    and the read raises). Querying between batches: tests/test_listen.py."""
    db = Database(database_url, application_name="test-listener")
    stop = threading.Event()
    got: list[str] = []
    connects: list[int] = []
    errors: list[BaseException] = []

    def on_listening(conn: Connection) -> None:
        connects.append(conn.info.backend_pid)

    def run() -> None:
        try:
            for notes in db.listen(["t_chan"], stop, "test", on_listening=on_listening, timeout=0.1,
                                 idle_socket=idle_socket):
                got.extend(n.payload for n in notes)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_until(lambda: len(connects) == 1, 10, "the listener to connect")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("NOTIFY t_chan, 'one'")
        wait_until(lambda: "one" in got, 10, "the first notification")
        conn.execute("SELECT pg_terminate_backend(%s)", (connects[0],))
        wait_until(lambda: len(connects) == 2, 20, "the listener to reconnect after its backend was killed")
        deadline = time.monotonic() + 10
        while "two" not in got and time.monotonic() < deadline:  # until the new LISTEN is in place
            conn.execute("NOTIFY t_chan, 'two'")
            time.sleep(0.2)
    stop.set()
    t.join(5)
    assert not t.is_alive() and not errors, errors
    assert got[0] == "one" and "two" in got
    assert connects[0] != connects[1]


def test_outcome_listener_rechecks_tables_while_notifications_arrive(database_url: str) -> None:
    """A handle whose notification was missed is resolved from the outcome table while other
    notifications keep arriving without a pause: the listener queries its connection between batches,
    never from inside psycopg's notifies() generator, which holds the connection (before that fix this
    test hung). A notification is only a wake-up: the decision it names is read from the tables."""
    import uuid

    from eventstore.core.outcomes import EmitResult, Outcome, ReasonCode
    from eventstore.sdk.listener import OutcomeListener
    from eventstore.wire.notifications import channel_for, pack

    missed, notified = uuid.uuid4(), uuid.uuid4()
    channel = channel_for("agent-x")
    listener = OutcomeListener(Database(database_url), "agent-x", recheck_after=0.2)
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            fut_missed = listener.expect(missed)
            conn.execute("INSERT INTO outcomes (event_id, agent_id, status, reason, reason_code) "
                         "VALUES (%s, 'agent-x', 'conflict', 'expected version 0', 'version_conflict')",
                         (missed,))
            # Notifications every 20 ms for 1.5 s: the listener never sees a quiet wake-up, so `missed`
            # goes stale while a notification is being handled.
            for _ in range(75):
                conn.execute("SELECT pg_notify(%s, 'not an outcome')", (channel,))
                time.sleep(0.02)
            fut_notified = listener.expect(notified)
            conn.execute("INSERT INTO outcomes (event_id, agent_id, status, reason, reason_code) "
                         "VALUES (%s, 'agent-x', 'rejected', 'r', 'invalid')", (notified,))
            payload = pack([EmitResult(notified, Outcome.REJECTED, "s", reason="r",
                                       reason_code=ReasonCode.INVALID)])[0]
            conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))
            r = fut_missed.result(10)
            assert (r.status, r.reason_code) == (Outcome.CONFLICT, ReasonCode.VERSION_CONFLICT)
            assert fut_notified.result(10).status is Outcome.REJECTED
    finally:
        listener.close()


def test_door_connections_plan_each_statement_for_its_parameters(database_url: str) -> None:
    """The door's connections use custom plans, so a lookup psycopg prepared while the log was small
    does not keep a generic plan (a sequential scan) as the log grows. The slow-down itself was measured
    on a 100,000-event log (Database.connect's docstring); it needs that much data, so it is a benchmark
    (`eventstore bench latency`), not a test."""
    with Database(database_url).connect(autocommit=True) as conn:
        assert conn.execute("SHOW plan_cache_mode").fetchone() == ("force_custom_plan",)
