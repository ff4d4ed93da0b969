"""Agents for the benchmarks: registered on the benchmark's own (embedded) database, so their envelopes
are signed exactly as a deployment's agents' are and the projector's authentication is measured too."""

from __future__ import annotations

from typing import Any

from eventstore.core.auth import Credential
from eventstore.core.settings import Settings
from eventstore.postgres.agents import register
from eventstore.postgres.connection import connect
from eventstore.sdk.client import AgentClient


def credential(settings: Settings, agent_id: str) -> Credential:
    """Register ``agent_id`` (again: a fresh credential) and return its credential."""
    with connect(settings.require_database(), autocommit=True) as conn, conn.cursor() as cur:
        return register(cur, agent_id)


def client(agent_id: str, settings: Settings, **options: Any) -> AgentClient:
    """An AgentClient for a freshly registered ``agent_id``."""
    return AgentClient(agent_id, settings, credential=str(credential(settings, agent_id)), **options)
