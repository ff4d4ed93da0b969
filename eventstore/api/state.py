"""What the API's request handlers share: settings, a connection pool and, once needed, a coordinator
(for kill, revive and release). Errors map onto HTTP status codes here, without stack traces."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from fastapi import HTTPException, Request

from eventstore.coordination import Coordinator
from eventstore.core.errors import (
    ConfigurationError,
    EventStoreError,
    InvalidEventError,
    InvalidQueryError,
    SchemaNotReadyError,
    TransientStorageError,
)
from eventstore.core.settings import Settings
from eventstore.postgres.connection import Database, convert


class ApiState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.database = Database(settings.require_database(), application_name="eventstore-api")
        self.pool = self.database.pool(min_size=1, max_size=6, autocommit=True, name="eventstore-api")
        self._coordinator: Coordinator | None = None
        self._lock = threading.Lock()
        self.check_lock = threading.Lock()
        self.check_cache: tuple[float, dict[str, Any]] | None = None

    def coordinator(self) -> Coordinator:
        with self._lock:
            if self._coordinator is None:
                self._coordinator = Coordinator(self.settings, pool_size=2)
            return self._coordinator

    @contextmanager
    def conn(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled autocommit connection; driver errors become EventStoreErrors."""
        try:
            with self.pool.connection(timeout=10) as conn:
                yield conn
        except psycopg.Error as e:
            raise convert(e) from e

    def close(self) -> None:
        if self._coordinator is not None:
            self._coordinator.close()
        self.pool.close()


def state(request: Request) -> ApiState:
    s: ApiState = request.app.state.api
    return s


def http_error(e: EventStoreError) -> HTTPException:
    """The HTTP answer for an error: the reason in ``detail``, never a traceback."""
    if isinstance(e, InvalidQueryError | InvalidEventError | ConfigurationError):
        return HTTPException(422, str(e))
    if isinstance(e, SchemaNotReadyError | TransientStorageError):
        return HTTPException(503, str(e))
    return HTTPException(500, f"{type(e).__name__}: {e}")
