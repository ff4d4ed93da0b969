"""The HTTP API in a thread of the test process, with an auditor and an operator token."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from eventstore.api.server import ServerThread
from eventstore.core.settings import Settings
from eventstore.postgres import tokens


@dataclass(frozen=True)
class Api:
    url: str
    auditor: str
    operator: str

    def headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(settings: Settings) -> Iterator[Api]:
    with psycopg.connect(settings.require_database(), autocommit=True) as conn:
        auditor = tokens.add(conn, "alice-auditor", "auditor")
        operator = tokens.add(conn, "olga-operator", "operator")
    server = ServerThread(settings).start()
    try:
        yield Api(server.url, auditor, operator)
    finally:
        server.stop()
