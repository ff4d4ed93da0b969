"""The agent's two LISTEN threads wait in poll(2) and still hear every notice (issue 11 follow-up).

psycopg's timed notify wait spins ~1 ms of CPU per call, so the outcome listener (a wait every 0.25 s)
and the lease listener (every 0.5 s) each burned ~0.4 % of a core in every idle agent process. Both wait on
the socket now (``Database.listen(idle_socket=True)``). The outcome listener queries its own connection
between batches, so a notice that arrives meanwhile is read by that query into psycopg's backlog, where the
socket no longer shows it: the listener must still settle that outcome at once, not at the next notice.
"""

from __future__ import annotations

import threading
import time
import uuid

import psycopg

from eventstore.coordination.wakeup import Wakeups
from eventstore.core.auth import Credential
from eventstore.core.outcomes import EmitResult, Outcome
from eventstore.postgres.connection import Connection, Database
from eventstore.sdk.listener import OutcomeListener
from eventstore.wire.notifications import OutcomeSeal, channel_for, pack


class QueryingListener(OutcomeListener):
    """An outcome listener whose lookups start with a slow query, so a notice can arrive while it is in one."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.inside = threading.Event()
        self.backlogged = -1
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def _lookup(self, conn: Connection, ids: list[str]) -> bool:
        if ids:
            self.inside.set()
            conn.execute("SELECT pg_sleep(0.5)")
            # The test's point: the notice came during the query, into psycopg's private backlog (not the
            # socket). Under heavy load it could come after; then the test would not test it, so it says so.
            self.backlogged = len(conn._notifies_backlog or ())
        return super()._lookup(conn, ids)


def notify(url: str, channel: str, payload: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))


def committed(event_id: uuid.UUID) -> EmitResult:
    return EmitResult(event_id, Outcome.COMMITTED, "idle-1", 1, 1, 1)


def test_an_outcome_noticed_while_the_listener_is_inside_a_query_settles_at_once(database_url: str) -> None:
    """Two emits pending; an unsealed wake-up for the first makes the listener look it up (a query); the
    projector's sealed notice for the second arrives during that query. No further notice comes, and the
    periodic re-check is far away: the second handle settles only if the listener takes psycopg's backlog."""
    agent, cred = "idle-agent", Credential.new()
    listener = QueryingListener(Database(database_url), agent, recheck_after=600.0, credential=cred)
    try:
        looked_up, noticed = uuid.uuid4(), uuid.uuid4()
        listener.expect(looked_up)
        fut = listener.expect(noticed)
        channel = channel_for(agent)
        (wake,) = pack([committed(looked_up)])  # unsealed: a wake-up only, read from the tables
        notify(database_url, channel, wake)
        assert listener.inside.wait(10), "the wake-up did not start a lookup"
        (sealed,) = pack([committed(noticed)], OutcomeSeal(agent, cred))
        notify(database_url, channel, sealed)  # while the listener's connection runs pg_sleep
        t0 = time.monotonic()
        result = fut.result(timeout=10)
        assert result.status is Outcome.COMMITTED and result.event_id == noticed
        assert listener.sealed_settled == 1
        assert time.monotonic() - t0 < 5
        assert listener.backlogged == 1, "the notice did not arrive during the query: the backlog path was not tried"
    finally:
        listener.close()


def thread_cpu(thread: threading.Thread) -> float:
    """CPU seconds a thread has used (its own clock, nanosecond resolution)."""
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def test_idle_listeners_use_next_to_no_cpu_and_still_wake(database_url: str) -> None:
    """Idle for 2 s, each listener thread uses well under 1 ms of CPU (psycopg's timed wait: ~7.6 ms for the
    outcome listener, ~3.8 ms for the lease listener); then each still hears its notice."""
    listener = OutcomeListener(Database(database_url), "idle-cpu", recheck_after=600.0, credential=Credential.new())
    wakeups = Wakeups(Database(database_url))
    try:
        wake = wakeups.register("idle:resource")
        assert wakeups.listening.wait(10)
        threads = {t.name: t for t in threading.enumerate()}
        outcome_thread, lease_thread = threads["outcomes-idle-cpu"], threads["eventstore-lease-listener"]
        time.sleep(0.3)
        wake.clear()
        before = thread_cpu(outcome_thread), thread_cpu(lease_thread)
        time.sleep(2.0)
        used = thread_cpu(outcome_thread) - before[0], thread_cpu(lease_thread) - before[1]
        assert used[0] < 0.002 and used[1] < 0.002, f"idle CPU in 2 s: outcome {used[0] * 1e3:.2f} ms, " \
                                                    f"lease {used[1] * 1e3:.2f} ms"
        notify(database_url, "eventstore_leases", "idle:resource")
        assert wake.wait(10), "the lease listener did not hear the release"
        fut = listener.expect(eid := uuid.uuid4())
        assert listener.seal is not None
        (sealed,) = pack([committed(eid)], listener.seal)
        notify(database_url, channel_for("idle-cpu"), sealed)
        assert fut.result(timeout=10).status is Outcome.COMMITTED
    finally:
        wakeups.close()
        listener.close()
