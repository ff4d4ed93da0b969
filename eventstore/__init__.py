"""eventstore: an event-sourced state-synchronisation backbone for multi-agent systems.

Agents emit typed events through Kafka; the projector commits them into PostgreSQL with version
checks and idempotency, exactly once; read models and subscribers see committed events only.
"""

from eventstore.aio import AsyncAgentClient
from eventstore.client import AgentClient, EmitHandle
from eventstore.coordination import AsyncCoordinator, Coordinator, Lease
from eventstore.coordination import Mode as LeaseMode
from eventstore.envelope import Envelope, LeaseRef
from eventstore.errors import (
    AgentKilledError,
    BrokerError,
    ConfigurationError,
    CoordinationError,
    DeadlockDetected,
    DecodeError,
    EmitTimeout,
    EventStoreError,
    InvalidEventError,
    LeaseNotHeldError,
    LeaseTimeout,
    LockOrderViolation,
    StorageError,
    TransientStorageError,
    UnknownEventTypeError,
)
from eventstore.eventlog import RecordedEvent
from eventstore.events import Event
from eventstore.outcomes import EmitResult, Outcome
from eventstore.projector import Projector
from eventstore.readmodels import ReadModel, read_models
from eventstore.settings import Settings

__all__ = [
    "AgentClient",
    "AgentKilledError",
    "AsyncAgentClient",
    "AsyncCoordinator",
    "BrokerError",
    "ConfigurationError",
    "CoordinationError",
    "Coordinator",
    "DeadlockDetected",
    "DecodeError",
    "EmitHandle",
    "EmitResult",
    "EmitTimeout",
    "Envelope",
    "Event",
    "EventStoreError",
    "InvalidEventError",
    "Lease",
    "LeaseMode",
    "LeaseNotHeldError",
    "LeaseRef",
    "LeaseTimeout",
    "LockOrderViolation",
    "Outcome",
    "Projector",
    "ReadModel",
    "RecordedEvent",
    "Settings",
    "StorageError",
    "TransientStorageError",
    "UnknownEventTypeError",
    "read_models",
]
