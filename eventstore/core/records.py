"""The records the system passes around (pure): an agent's intent (``Envelope``) and the event as
the log stores it (``RecordedEvent``), with its field list in one place.

``RECORDED_FIELDS`` is the single list of a stored event's fields: the SQL that reads events selects
exactly these columns by name and maps rows onto ``RecordedEvent`` by name (never by position), and
the committed-topic codec writes and reads the same names.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from eventstore.core.events import Event, EventRegistry, registry
from eventstore.core.validation import CONTROL_CHARS, MAX_BIGINT, MAX_NAME


class LeaseRef(BaseModel):
    """The lease an event was written under: the resource and the fencing token of the grant."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    resource: str = Field(min_length=1, max_length=MAX_NAME, pattern=r"^[^\x00-\x1f\x7f]+$")
    token: int = Field(ge=1, le=MAX_BIGINT)


class AuthTag(BaseModel):
    """The envelope's authentication: which credential signed it, and the HMAC (see core/auth.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    mac: str = Field(pattern=r"^[A-Za-z0-9_-]{43}$")


class Envelope(BaseModel):
    """Everything the projector needs to decide on one event. The database adds position and
    recorded-at on commit; ``occurred_at`` is only what the agent claims."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: uuid.UUID
    idempotency_key: str = Field(min_length=1, max_length=MAX_NAME)
    stream: str = Field(min_length=1, max_length=MAX_NAME)
    expected_version: int | None = Field(default=None, ge=0, le=MAX_BIGINT)
    agent_id: str = Field(min_length=1, max_length=MAX_NAME)
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None = None
    occurred_at: AwareDatetime | None = None
    type: str = Field(min_length=1, max_length=MAX_NAME)
    schema_version: int = Field(ge=1, le=2**31 - 1)
    payload: dict[str, Any]
    lease: LeaseRef | None = None
    # Last on the wire, appended by the signer over the bytes of all other fields (never set by hand).
    auth: AuthTag | None = None

    @field_validator("idempotency_key", "stream", "agent_id", "type")
    @classmethod
    def _no_control_chars(cls, v: str) -> str:
        if CONTROL_CHARS.search(v):
            raise ValueError("must not contain control characters")
        return v


class LeaseFields(Protocol):
    """What the projector reads of an envelope's lease (LeaseRef, or the intake decoder's own struct)."""

    @property
    def resource(self) -> str: ...
    @property
    def token(self) -> int: ...


class EnvelopeFields(Protocol):
    """What the projector's decision and append read of an envelope, whichever decoder produced it
    (``Envelope``, or the one-pass intake decoder of eventstore/wire/envelope.py); the payload travels apart."""

    @property
    def event_id(self) -> uuid.UUID: ...
    @property
    def idempotency_key(self) -> str: ...
    @property
    def stream(self) -> str: ...
    @property
    def expected_version(self) -> int | None: ...
    @property
    def agent_id(self) -> str: ...
    @property
    def correlation_id(self) -> uuid.UUID: ...
    @property
    def causation_id(self) -> uuid.UUID | None: ...
    @property
    def occurred_at(self) -> datetime | None: ...
    @property
    def type(self) -> str: ...
    @property
    def schema_version(self) -> int: ...
    @property
    def lease(self) -> LeaseFields | None: ...


@dataclass(frozen=True)
class RecordedEvent:
    """An event as committed: position and recorded-at come from the database."""

    position: int
    event_id: uuid.UUID
    stream: str
    version: int
    type: str
    schema_version: int
    payload: dict[str, Any]
    agent_id: str
    idempotency_key: str
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None
    occurred_at: datetime | None
    recorded_at: datetime
    lease_resource: str | None = None
    fencing_token: int | None = None
    # The chain link (see eventstore.core.hashing.chain_hash): what lets a subscriber check a message
    # from the committed topic against the log. None only where an event was built without the log.
    prev_hash: bytes | None = None
    hash: bytes | None = None

    def event(self, types: EventRegistry = registry) -> Event:
        """The payload as its typed Event class."""
        return types.decode(self.type, self.schema_version, self.payload)


RECORDED_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RecordedEvent))
_new = object.__new__


def recorded_event(*values: Any) -> RecordedEvent:
    """A RecordedEvent from its field values in ``RECORDED_FIELDS`` order (all of them), built without the
    frozen dataclass's per-field ``__init__`` (a third of its cost): the projector builds thousands per batch.
    Equal to ``RecordedEvent(*values)``."""
    ev: RecordedEvent = _new(RecordedEvent)
    ev.__dict__.update(zip(RECORDED_FIELDS, values, strict=True))  # ValueError unless all are given
    return ev


@dataclass(frozen=True)
class NewEvent:
    """An event whose stream version has been decided, ready to append."""

    event_id: uuid.UUID
    stream: str
    version: int
    type: str
    schema_version: int
    payload_json: str
    agent_id: str
    idempotency_key: str
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None
    occurred_at: datetime | None
    lease_resource: str | None
    fencing_token: int | None
    intent: bytes
    payload: dict[str, Any] | None = None  # the parsed payload, when the caller has it (saves a parse)

    def recorded(self, position: int, recorded_at: datetime, payload: dict[str, Any],
                 prev_hash: bytes | None = None, hash: bytes | None = None) -> RecordedEvent:
        """The event as the log stores it once appended at ``position`` with that chain link."""
        return RecordedEvent(
            position=position, event_id=self.event_id, stream=self.stream, version=self.version, type=self.type,
            schema_version=self.schema_version, payload=payload, agent_id=self.agent_id,
            idempotency_key=self.idempotency_key, correlation_id=self.correlation_id,
            causation_id=self.causation_id, occurred_at=self.occurred_at, recorded_at=recorded_at,
            lease_resource=self.lease_resource, fencing_token=self.fencing_token, prev_hash=prev_hash, hash=hash,
        )


@dataclass(frozen=True)
class DirectEvent:
    """An event appended by a server-side component (the coordinator) straight into the log,
    without a version check: lock history, kill-switch records."""

    stream: str
    event: Event
    agent_id: str
    idempotency_key: str | None = None
    correlation_id: uuid.UUID | None = None
    causation_id: uuid.UUID | None = None
    lease_resource: str | None = None
    fencing_token: int | None = None
