"""Thin PostgreSQL adapter: connections, and the one place where driver errors become ours."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import errors as pgerr

from eventstore.errors import (
    AppendOnlyViolation,
    SchemaNotReadyError,
    StorageError,
    TransientStorageError,
)

# SQLSTATE raised by the append-only triggers of migration 0001.
APPEND_ONLY_SQLSTATE = "ES001"

_TRANSIENT = (
    pgerr.SerializationFailure,
    pgerr.DeadlockDetected,
    pgerr.LockNotAvailable,
    pgerr.AdminShutdown,
    pgerr.CannotConnectNow,
    psycopg.OperationalError,
)


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
    if isinstance(e, _TRANSIENT):
        return TransientStorageError(f"PostgreSQL is temporarily unavailable or busy: {e}")
    return StorageError(f"PostgreSQL error {e.sqlstate or ''}: {e}")


@contextmanager
def converted_errors() -> Iterator[None]:
    """Re-raise psycopg errors as StorageError subclasses, keeping the driver error as the cause."""
    try:
        yield
    except psycopg.Error as e:
        raise convert(e) from e


def connect(database_url: str, *, autocommit: bool = False) -> psycopg.Connection[tuple[object, ...]]:
    """Open a connection, converting connection failures."""
    with converted_errors():
        return psycopg.connect(database_url, autocommit=autocommit)
