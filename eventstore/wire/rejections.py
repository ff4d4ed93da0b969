"""Typed records of events that were not committed, published on ``<ns>.rejections`` (keyed by agent)
so the emitting agent or an operator can follow them like any other stream of facts.

Duplicates are not here: their effect exists (once). The ``outcomes`` table is the durable record;
the topic copy is produced after the batch commits.
"""

from __future__ import annotations

import json
import uuid
from typing import ClassVar

from eventstore.core.events import Event
from eventstore.core.records import Envelope
from eventstore.wire.envelope import Headers


class RejectionRecord(Event):
    """Base of the rejection records: published by the projector only."""

    server_only: ClassVar[bool] = True
    abstract_event: ClassVar[bool] = True


class EventConflicted(RejectionRecord):
    """The agent's expected version did not match the stream's."""

    event_id: uuid.UUID
    agent_id: str
    stream: str
    idempotency_key: str
    expected_version: int
    actual_version: int


class IdempotencyKeyReused(RejectionRecord):
    """A committed idempotency key came back with a different event."""

    event_id: uuid.UUID
    agent_id: str
    stream: str
    idempotency_key: str
    original_position: int | None


class EventRejected(RejectionRecord):
    """Refused for another reason: invalid or unknown event, stale lease, killed agent, failing handler."""

    event_id: uuid.UUID | None
    agent_id: str | None
    stream: str | None
    reason: str


def encode_rejection(rejection: Event) -> tuple[bytes, bytes, Headers]:
    agent = str(getattr(rejection, "agent_id", "") or "")
    body = {"type": rejection.event_type, "schema_version": rejection.schema_version,
            "payload": rejection.model_dump(mode="json")}
    return agent.encode(), json.dumps(body).encode(), [("es-type", rejection.event_type)]


def conflict(env: Envelope, expected: int, actual: int) -> EventConflicted:
    return EventConflicted(event_id=env.event_id, agent_id=env.agent_id, stream=env.stream,
                           idempotency_key=env.idempotency_key, expected_version=expected,
                           actual_version=actual)
