"""``Database.listen`` lets its caller use the listening connection between notifications.

The outcome listener re-checks pending outcomes on the same connection while notifications flow; with
psycopg's notifies() suspended mid-iteration that query waited for the connection lock forever, and an
agent with many events in flight stopped hearing any outcome (found by ``eventstore bench write-path``).
"""

from __future__ import annotations

import threading

import psycopg

from eventstore.postgres.connection import Connection, Database


def test_the_connection_can_be_queried_between_notifications(database_url: str) -> None:
    stop = threading.Event()
    listening = threading.Event()
    seen: list[str] = []
    queried: list[int] = []
    holder: list[Connection] = []

    def on_listening(conn: Connection) -> None:
        holder.append(conn)
        listening.set()

    def run() -> None:
        for notes in Database(database_url).listen(["es_test"], stop, "test listener", on_listening=on_listening):
            for note in notes:
                seen.append(note.payload)
                row = holder[0].execute("SELECT 1").fetchone()  # what the outcome listener's re-check does
                queried.append(0 if row is None else int(row[0]))
            if len(seen) >= 3:
                stop.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert listening.wait(20)
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        for i in range(3):  # delivered together, so the caller queries while more are pending
            conn.execute("SELECT pg_notify('es_test', %s)", (str(i),))
    t.join(20)
    stop.set()
    assert not t.is_alive(), f"the listener hung after {seen} (querying between notifications)"
    assert seen == ["0", "1", "2"] and queried == [1, 1, 1]


def test_waiting_on_the_socket_delivers_notices_including_those_that_came_with_listen(database_url: str) -> None:
    """``idle_socket=True`` (poll(2) on the socket, then read): a notice psycopg read while LISTEN ran sits
    in its backlog, which the socket no longer shows; it is handed over at once, then live notices are,
    and the idle waits cost a fraction of psycopg's timed wait (which spins ~1 ms per call)."""
    import time

    stop = threading.Event()

    def on_listening(conn: Connection) -> None:
        conn.execute("SELECT pg_notify('es_idle', 'early')")  # to itself: delivered with this answer

    gen = Database(database_url).listen(["es_idle"], stop, "test listener", on_listening=on_listening,
                                        timeout=0.01, idle_socket=True)
    try:
        assert [n.payload for n in next(gen)] == ["early"]
        t0, cpu0, waits = time.monotonic(), time.thread_time(), 0
        while time.monotonic() - t0 < 0.5:
            assert gen.send(0.01) == []
            waits += 1
        per_wait = (time.thread_time() - cpu0) / waits
        assert per_wait < 0.0005, f"{per_wait * 1e6:.0f} µs CPU per 10 ms wait"  # psycopg's: ~950 µs
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("SELECT pg_notify('es_idle', 'live')")
        got: list[str] = []
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            got = [n.payload for n in gen.send(0.05)]
        assert got == ["live"]
    finally:
        stop.set()
        gen.close()



def test_a_notice_read_by_the_callers_query_is_handed_over_without_waiting_for_the_socket(database_url: str) -> None:
    """``idle_socket=True`` with a caller that queries between batches: a notice that reaches the socket
    while the caller is busy is read by the caller's next query into psycopg's backlog, where poll(2) on
    the socket cannot see it. The next wait hands it over at once instead of after the timeout (or, with
    no further notice, never)."""
    import time

    stop = threading.Event()
    holder: list[Connection] = []
    gen = Database(database_url).listen(["es_busy"], stop, "test listener", on_listening=holder.append,
                                        timeout=0.05, idle_socket=True)
    try:
        assert next(gen) == []  # listening; nothing has arrived
        (conn,) = holder
        # A session hears its own NOTIFY: it arrives with the statement's own answer, so the caller's query
        # itself reads it into psycopg's backlog (deterministic: no race with a second connection).
        conn.execute("NOTIFY es_busy, 'while busy'")
        assert len(conn._notifies_backlog or ()) == 1  # psycopg's private backlog: what poll(2) cannot see
        t0 = time.monotonic()
        got = [n.payload for n in gen.send(10.0)]
        waited = time.monotonic() - t0
        assert got == ["while busy"], f"nothing after {waited:.1f} s: the notice sat in psycopg's backlog"
        assert waited < 5
    finally:
        stop.set()
        gen.close()
