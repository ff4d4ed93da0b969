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
