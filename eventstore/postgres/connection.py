"""The PostgreSQL door: every connection of the project is opened here, every driver error is
converted here (by SQLSTATE, never by message text), and long-running components reconnect through
here with backoff.

Which errors are retried is decided by :func:`is_transient`: connection failures (class 08, a lost
connection without SQLSTATE, server shutdown 57P01-57P03, too many connections 53300) and
concurrency outcomes (serialization failure 40001, deadlock 40P01, lock not available 55P03). Anything
else is not retried: a data error is the caller's to handle, and disk full (53100), a program limit
(54000) or a missing privilege (42501) would fail the same way again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pgerr
from psycopg import sql
from psycopg_pool import ConnectionPool

from eventstore.core.backoff import backoff_delays
from eventstore.core.errors import (
    AppendOnlyViolation,
    SchemaNotReadyError,
    StorageError,
    TransientStorageError,
)

log = logging.getLogger(__name__)

# SQLSTATE raised by the append-only triggers of migration 0001.
APPEND_ONLY_SQLSTATE = "ES001"
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53300"})

Connection = psycopg.Connection[Any]


def is_transient(e: psycopg.Error) -> bool:
    """Whether retrying the same work may succeed (see the module docstring for the table)."""
    state = e.sqlstate
    if state is None:
        return isinstance(e, psycopg.OperationalError)  # the connection broke: no server answer at all
    return state in TRANSIENT_SQLSTATES or state.startswith("08")


def convert(e: psycopg.Error) -> StorageError:
    """Map a driver error onto the EventStoreError hierarchy by SQLSTATE class, never by message text."""
    if e.sqlstate == APPEND_ONLY_SQLSTATE:
        return AppendOnlyViolation(
            "the event log and outcomes are append-only; the database refused the change "
            f"({e.diag.message_primary})"
        )
    if isinstance(e, pgerr.UndefinedTable):
        return SchemaNotReadyError(
            f"the database schema is missing ({e.diag.message_primary}); run `eventstore migrate`"
        )
    if is_transient(e):
        return TransientStorageError(f"PostgreSQL is temporarily unavailable or busy: {_first_line(e)}")
    return StorageError(f"PostgreSQL error {e.sqlstate or ''}: {_first_line(e)}")


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


@contextmanager
def converted_errors() -> Iterator[None]:
    """Re-raise psycopg errors as StorageError subclasses, keeping the driver error as the cause."""
    try:
        yield
    except psycopg.Error as e:
        raise convert(e) from e


class Database:
    """Connections to one PostgreSQL server. The URL is a secret: it is never shown or logged."""

    def __init__(self, url: str, *, application_name: str = "eventstore") -> None:
        self._url = url
        self.application_name = application_name

    def __repr__(self) -> str:
        return f"Database(application_name={self.application_name!r})"

    def connect(self, *, autocommit: bool = False) -> Connection:
        """A new connection; a failure to connect raises (Transient)StorageError."""
        with converted_errors():
            return psycopg.connect(self._url, autocommit=autocommit, application_name=self.application_name)

    def pool(self, *, min_size: int = 1, max_size: int = 4, autocommit: bool = True,
             name: str = "eventstore") -> ConnectionPool[Connection]:
        """A connection pool (psycopg_pool checks connections and replaces broken ones)."""
        kwargs: dict[str, Any] = {"autocommit": autocommit, "application_name": self.application_name}
        with converted_errors():
            return ConnectionPool(self._url, min_size=min_size, max_size=max_size, kwargs=kwargs, open=True,
                                  name=name, check=ConnectionPool.check_connection)

    def reconnecting(self, stop: threading.Event, what: str, *, autocommit: bool = True) -> Iterator[Connection]:
        """Yield a connection, and a fresh one each time the caller asks again (after its connection
        broke), waiting with capped jittered backoff while the server is away; ends when ``stop`` is set."""
        delays = backoff_delays(base=0.05, cap=2.0)
        while not stop.is_set():
            try:
                conn = self.connect(autocommit=autocommit)
            except TransientStorageError as e:
                log.warning("%s: PostgreSQL unreachable, retrying: %s", what, e)
                stop.wait(next(delays))
                continue
            delays = backoff_delays(base=0.05, cap=2.0)
            try:
                yield conn
            finally:
                conn.close()

    def listen(self, channels: list[str], stop: threading.Event, what: str, *,
               on_listening: Callable[[Connection], None] | None = None,
               timeout: float = 0.25) -> Iterator[psycopg.Notify | None]:
        """LISTEN on ``channels`` and yield notifications, and None every ``timeout`` seconds so the
        caller can do periodic work; reconnects (and calls ``on_listening`` again) after a lost
        connection, because a notification may have been missed meanwhile. Ends when ``stop`` is set."""
        for batch in self.listen_batches(channels, stop, what, on_listening=on_listening, timeout=timeout):
            if batch:
                yield from batch
            else:
                yield None

    def listen_batches(self, channels: list[str], stop: threading.Event, what: str, *,
                       on_listening: Callable[[Connection], None] | None = None,
                       timeout: float = 0.25) -> Iterator[list[psycopg.Notify]]:
        """Like :meth:`listen`, but yields every notification that has arrived as one list (an empty list
        after ``timeout`` seconds without any), so a caller can act once per burst. The lists are taken
        out of ``notifies()`` before they are yielded: that generator holds the connection's lock, and a
        caller querying on this connection from inside it would deadlock."""
        for conn in self.reconnecting(stop, what):
            try:
                for ch in channels:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(ch)))
                if on_listening is not None:
                    on_listening(conn)
                while not stop.is_set():
                    notes = list(conn.notifies(timeout=timeout, stop_after=1))
                    if notes:  # and whatever else is already queued behind the first
                        notes += conn.notifies(timeout=0.0005)
                    yield notes
            except psycopg.Error as e:
                if not is_transient(e):
                    raise convert(e) from e
                log.warning("%s lost its PostgreSQL connection, reconnecting: %s", what, _first_line(e))


def connect(database_url: str, *, autocommit: bool = False) -> Connection:
    """Open one connection (for short-lived commands), converting connection failures."""
    return Database(database_url).connect(autocommit=autocommit)
