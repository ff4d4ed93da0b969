"""The PostgreSQL door: every connection of the project is opened here, every driver error is
converted here (by SQLSTATE, never by message text), and long-running components reconnect through
here with backoff.

What an error means for the work that met it is decided on purpose, by SQLSTATE, in
:func:`disposition` (the table is also in docs/faults.md):

- RETRY (the same work may succeed later): connection failures (class 08, a lost connection without
  SQLSTATE), server shutdown 57P01-57P03, too many connections 53300, serialization failure 40001,
  deadlock 40P01, lock not available 55P03, and the idempotency-key race (23505 on the key's unique
  constraint: on retry the key is committed and the event is decided a duplicate).
- DEAD_LETTER (one message carries a value the database refuses; the projector finds it by splitting
  the batch): data exceptions (class 22), integrity violations (class 23), program limits (class 54,
  e.g. an index row too large in a read model).
- STOP (retrying or skipping would be wrong; an operator must act): disk full 53100, insufficient
  privilege 42501, a missing database 3D000, a wrong password 28P01, and anything not listed.
"""

from __future__ import annotations

import enum
import logging
import select
import threading
from collections.abc import Callable, Generator, Iterator
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
TRANSIENT_CLASSES = ("08",)
DEAD_LETTER_CLASSES = ("22", "23", "54")
# The unique constraint on the event log's idempotency key: two projectors appending the same key.
# Idempotency keys are unique per agent (migration 0005); a concurrent append of the same key by two
# projectors is a race, retried (the retry decides DUPLICATE).
IDEMPOTENCY_KEY_CONSTRAINT = "events_agent_key_key"

Connection = psycopg.Connection[Any]


class Disposition(enum.Enum):
    """What to do with work that met a database error (see the module docstring for the table)."""

    RETRY = "retry"
    DEAD_LETTER = "dead-letter"
    STOP = "stop"


def disposition(sqlstate: str | None, *, constraint: str | None = None, connection_lost: bool = False) -> Disposition:
    """The table, as a pure function of the SQLSTATE (and the constraint of a unique violation)."""
    if sqlstate is None:
        return Disposition.RETRY if connection_lost else Disposition.STOP
    if sqlstate in TRANSIENT_SQLSTATES or sqlstate.startswith(TRANSIENT_CLASSES):
        return Disposition.RETRY
    if sqlstate == "23505" and constraint == IDEMPOTENCY_KEY_CONSTRAINT:
        return Disposition.RETRY
    if sqlstate.startswith(DEAD_LETTER_CLASSES):
        return Disposition.DEAD_LETTER
    return Disposition.STOP


def disposition_of(e: psycopg.Error) -> Disposition:
    """:func:`disposition` for a driver error; no SQLSTATE on an OperationalError means the connection broke."""
    return disposition(e.sqlstate, constraint=e.diag.constraint_name if e.sqlstate else None,
                       connection_lost=isinstance(e, psycopg.OperationalError))


def is_transient(e: psycopg.Error) -> bool:
    """Whether retrying the same work may succeed (see the module docstring for the table)."""
    return disposition_of(e) is Disposition.RETRY


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


CUSTOM_PLANS = "-c plan_cache_mode=force_custom_plan"


class Database:
    """Connections to one PostgreSQL server. The URL is a secret: it is never shown or logged."""

    def __init__(self, url: str, *, application_name: str = "eventstore") -> None:
        self._url = url
        self.application_name = application_name

    def __repr__(self) -> str:
        return f"Database(application_name={self.application_name!r})"

    def connect(self, *, autocommit: bool = False) -> Connection:
        """A new connection; a failure to connect raises (Transient)StorageError.

        It plans each statement for its parameters (``plan_cache_mode=force_custom_plan``). These
        connections live long and repeat a few statements, which psycopg prepares; PostgreSQL would
        then keep a generic plan made while the tables were small, a sequential scan, until something
        invalidates it. Measured: the projector's idempotency and event-id lookups took 8.5 and 14.7 ms
        per batch on a 100,000-event log from such a plan, against 0.1 and 0.2 ms with a fresh plan,
        which is what made emit -> outcome slow after heavy traffic. Re-planning costs tens of µs."""
        with converted_errors():
            return psycopg.connect(self._url, autocommit=autocommit, application_name=self.application_name,
                                   options=CUSTOM_PLANS)

    def pool(self, *, min_size: int = 1, max_size: int = 4, autocommit: bool = True,
             name: str = "eventstore", check: bool = True) -> ConnectionPool[Connection]:
        """A connection pool (psycopg_pool checks connections and replaces broken ones). ``check=False``
        skips the test round trip on every checkout, for callers that retry transient errors and call
        ``pool.check()`` after one (the coordinator)."""
        kwargs: dict[str, Any] = {"autocommit": autocommit, "application_name": self.application_name}
        with converted_errors():
            return ConnectionPool(self._url, min_size=min_size, max_size=max_size, kwargs=kwargs, open=True,
                                  name=name, check=ConnectionPool.check_connection if check else None)

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
               timeout: float = 0.25, idle_socket: bool = False) -> Generator[list[psycopg.Notify], float | None, None]:
        """LISTEN on ``channels`` and yield notifications in batches as soon as they arrive (an empty
        list after ``timeout`` seconds without any, so the caller can do periodic work on the connection
        between batches); reconnects (and calls ``on_listening`` again) after a lost connection, because a
        notification may have been missed meanwhile. Ends when ``stop`` is set. A caller that ``send()``s
        a number waits that long for the next batch instead (0: take what has arrived, without waiting).

        ``idle_socket``: wait in poll(2) on the connection's socket, then read what arrived. psycopg's
        own timed wait costs ~0.95 ms of CPU per call whatever the timeout (measured, psycopg 3.3; a busy
        wait, it seems), which is 10% of a core for a caller that waits 10 ms at a time. Notices that
        arrive while the caller queries the connection between batches (or with LISTEN's own answer) are
        read by psycopg into its backlog, which the socket no longer shows: each wait therefore first takes
        the backlog without waiting (``notifies(timeout=0)``, ~3 µs) and polls the socket only if it is empty.

        The batch is collected before it is yielded: psycopg holds the connection while its
        ``notifies()`` generator waits, so a caller querying the connection inside it would block."""
        for conn in self.reconnecting(stop, what):
            try:
                for ch in channels:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(ch)))
                if on_listening is not None:
                    on_listening(conn)
                wait = timeout
                readable = _socket_wait(conn) if idle_socket else None
                while not stop.is_set():
                    # stop_after=1: hand over what arrived as soon as something did, with whatever is
                    # already queued behind it (timeout=0 reads what has arrived without waiting for
                    # more: a wait here would delay every outcome); only a quiet connection waits out
                    # the timeout.
                    if readable is not None:
                        # psycopg's backlog first: notices read during the caller's queries (or LISTEN's)
                        notes = list(conn.notifies(timeout=0))
                        if not notes and readable(max(wait, 0.0)):
                            notes = list(conn.notifies(timeout=0))
                    else:
                        notes = list(conn.notifies(timeout=wait, stop_after=1))
                        if notes:
                            notes += conn.notifies(timeout=0)
                    asked = yield notes
                    wait = timeout if asked is None else asked
            except psycopg.Error as e:
                if not is_transient(e):
                    raise convert(e) from e
                log.warning("%s lost its PostgreSQL connection, reconnecting: %s", what, _first_line(e))


def _socket_wait(conn: Connection) -> Callable[[float], bool]:
    """A wait of up to n seconds until the connection's socket is readable (poll(2): no busy wait, no
    select() descriptor limit); True if it is."""
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN)
    return lambda seconds: bool(poller.poll(seconds * 1000))


def connect(database_url: str, *, autocommit: bool = False) -> Connection:
    """Open one connection (for short-lived commands), converting connection failures."""
    return Database(database_url).connect(autocommit=autocommit)
