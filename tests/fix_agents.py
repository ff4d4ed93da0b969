"""Agent credentials for the tests, as a pytest plugin.

A test convenience, not a security mechanism: an ``AgentClient`` created in a test without a
credential (and without ``EVENTSTORE_AGENT_CREDENTIAL``) registers its agent on the test's database
through the operator path (``eventstore_register_agent``, once per database and agent id) and signs
with that credential, so tests written as ``AgentClient("some-agent", settings)`` keep working with
authentication on. Attack tests opt out with ``@pytest.mark.raw_agents`` (clients then get only the
credential they are given) or simply pass an explicit ``credential=``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from eventstore.core.auth import Credential, sign
from eventstore.core.errors import EventStoreError
from eventstore.core.settings import Settings
from eventstore.core.validation import check_name
from eventstore.discovery import resolve_settings
from eventstore.postgres import agents
from eventstore.sdk.client import AgentClient

_registered: dict[tuple[str, str], Credential] = {}
_lock = threading.Lock()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "raw_agents: AgentClient gets no automatic credential in this test")


def credential_for(database_url: str, agent_id: str, streams: list[str] | None = None,
                   types: list[str] | None = None) -> Credential:
    """Register ``agent_id`` on this database once (as the test's superuser) and return its credential."""
    with _lock:
        cred = _registered.get((database_url, agent_id))
        if cred is None:
            with psycopg.connect(database_url, autocommit=True) as conn, conn.cursor() as cur:
                cred = agents.register(cur, agent_id, streams, types)
            _registered[(database_url, agent_id)] = cred
        return cred


def signed(database_url: str, value: bytes, agent_id: str = "agent-h") -> bytes:
    """A raw envelope (as a test builds it, for a producer other than the SDK) signed the way its agent
    would sign it, the agent registered on this database first."""
    return sign(value, credential_for(database_url, agent_id))


@pytest.fixture(autouse=True)
def auto_credentials(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if request.node.get_closest_marker("raw_agents") is not None:
        yield
        return
    original = AgentClient.__init__

    def init(self: AgentClient, agent_id: str, settings: Settings | None = None, *,
             credential: str | Credential | None = None, **kw: Any) -> None:
        if credential is None:
            try:
                resolved = resolve_settings(settings, need_kafka=True)
                check_name("agent_id", agent_id)
                if resolved.agent_credential is None and resolved.database_url is not None:
                    credential = credential_for(resolved.require_database(), agent_id)
            except EventStoreError:
                pass  # the original constructor raises the real error
        original(self, agent_id, settings, credential=credential, **kw)

    monkeypatch.setattr(AgentClient, "__init__", init)
    yield
