"""eventstore: an event-sourced state-synchronisation backbone for multi-agent systems.

Agents emit typed events through Kafka; the projector commits them into PostgreSQL with version
checks and idempotency, exactly once; read models and subscribers see committed events only.

The public names below are loaded on first use, so that importing the pure core
(``eventstore.core``) does not import the database or broker clients.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, tuple[str, str]] = {
    "AgentClient": ("eventstore.sdk.client", "AgentClient"),
    "AgentKilledError": ("eventstore.core.errors", "AgentKilledError"),
    "AsyncAgentClient": ("eventstore.sdk.aio", "AsyncAgentClient"),
    "AsyncCoordinator": ("eventstore.coordination.aio", "AsyncCoordinator"),
    "BrokerError": ("eventstore.core.errors", "BrokerError"),
    "ConfigurationError": ("eventstore.core.errors", "ConfigurationError"),
    "CoordinationError": ("eventstore.core.errors", "CoordinationError"),
    "Coordinator": ("eventstore.coordination.coordinator", "Coordinator"),
    "DeadlockDetected": ("eventstore.core.errors", "DeadlockDetected"),
    "DecodeError": ("eventstore.core.errors", "DecodeError"),
    "EmitHandle": ("eventstore.sdk.client", "EmitHandle"),
    "EmitResult": ("eventstore.core.outcomes", "EmitResult"),
    "EmitTimeout": ("eventstore.core.errors", "EmitTimeout"),
    "Envelope": ("eventstore.core.records", "Envelope"),
    "Event": ("eventstore.core.events", "Event"),
    "EventStoreError": ("eventstore.core.errors", "EventStoreError"),
    "InvalidEventError": ("eventstore.core.errors", "InvalidEventError"),
    "Lease": ("eventstore.coordination.acquisition", "Lease"),
    "LeaseMode": ("eventstore.core.lockrules", "Mode"),
    "LeaseNotHeldError": ("eventstore.core.errors", "LeaseNotHeldError"),
    "LeaseRef": ("eventstore.core.records", "LeaseRef"),
    "LeaseTimeout": ("eventstore.core.errors", "LeaseTimeout"),
    "LockOrderViolation": ("eventstore.core.errors", "LockOrderViolation"),
    "Outcome": ("eventstore.core.outcomes", "Outcome"),
    "Projector": ("eventstore.projection.projector", "Projector"),
    "ReadModel": ("eventstore.postgres.readmodels", "ReadModel"),
    "ReasonCode": ("eventstore.core.outcomes", "ReasonCode"),
    "RecordedEvent": ("eventstore.core.records", "RecordedEvent"),
    "Settings": ("eventstore.core.settings", "Settings"),
    "StorageError": ("eventstore.core.errors", "StorageError"),
    "TransientStorageError": ("eventstore.core.errors", "TransientStorageError"),
    "UnknownEventTypeError": ("eventstore.core.errors", "UnknownEventTypeError"),
    "read_models": ("eventstore.postgres.readmodels", "read_models"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'eventstore' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from eventstore.coordination.acquisition import Lease as Lease
    from eventstore.coordination.aio import AsyncCoordinator as AsyncCoordinator
    from eventstore.coordination.coordinator import Coordinator as Coordinator
    from eventstore.core.errors import AgentKilledError as AgentKilledError
    from eventstore.core.errors import BrokerError as BrokerError
    from eventstore.core.errors import ConfigurationError as ConfigurationError
    from eventstore.core.errors import CoordinationError as CoordinationError
    from eventstore.core.errors import DeadlockDetected as DeadlockDetected
    from eventstore.core.errors import DecodeError as DecodeError
    from eventstore.core.errors import EmitTimeout as EmitTimeout
    from eventstore.core.errors import EventStoreError as EventStoreError
    from eventstore.core.errors import InvalidEventError as InvalidEventError
    from eventstore.core.errors import LeaseNotHeldError as LeaseNotHeldError
    from eventstore.core.errors import LeaseTimeout as LeaseTimeout
    from eventstore.core.errors import LockOrderViolation as LockOrderViolation
    from eventstore.core.errors import StorageError as StorageError
    from eventstore.core.errors import TransientStorageError as TransientStorageError
    from eventstore.core.errors import UnknownEventTypeError as UnknownEventTypeError
    from eventstore.core.events import Event as Event
    from eventstore.core.lockrules import Mode as LeaseMode  # noqa: F401 (re-exported under another name)
    from eventstore.core.outcomes import EmitResult as EmitResult
    from eventstore.core.outcomes import Outcome as Outcome
    from eventstore.core.outcomes import ReasonCode as ReasonCode
    from eventstore.core.records import Envelope as Envelope
    from eventstore.core.records import LeaseRef as LeaseRef
    from eventstore.core.records import RecordedEvent as RecordedEvent
    from eventstore.core.settings import Settings as Settings
    from eventstore.postgres.readmodels import ReadModel as ReadModel
    from eventstore.postgres.readmodels import read_models as read_models
    from eventstore.projection.projector import Projector as Projector
    from eventstore.sdk.aio import AsyncAgentClient as AsyncAgentClient
    from eventstore.sdk.client import AgentClient as AgentClient
    from eventstore.sdk.client import EmitHandle as EmitHandle
