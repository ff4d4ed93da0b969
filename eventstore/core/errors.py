"""The one exception hierarchy of the project: every public error is an :class:`EventStoreError`.

Each message says what was wrong and what the user can do about it. Driver errors (psycopg,
confluent-kafka) are converted in :mod:`eventstore.postgres.connection` and :mod:`eventstore.kafka`, never here.
"""

from __future__ import annotations


class EventStoreError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigurationError(EventStoreError):
    """A setting is missing or malformed (environment variable, URL, module name)."""


class InvalidEventError(EventStoreError):
    """An event or its envelope fields are invalid; raised by the SDK before anything is sent."""


class UnknownEventTypeError(InvalidEventError):
    """An event type (name, schema version) that no imported module registered."""


class DecodeError(EventStoreError):
    """Bytes on the intake topic are not a valid envelope; such messages are dead-lettered."""


class OffsetsNotTrustedError(EventStoreError):
    """A stored intake offset disagrees with the topic (recreated, truncated, a gap): the projector stops
    rather than skip messages; an operator resolves it with ``eventstore offsets reset``."""

    def __init__(self, message: str, *, partition: int | None = None, stored: int | None = None,
                 ahead: bool = False) -> None:
        super().__init__(message)
        self.partition = partition
        self.stored = stored
        self.ahead = ahead  # the stored offset is beyond the end the broker reported


class StorageError(EventStoreError):
    """PostgreSQL failed in a way that is not the caller's fault; see the cause for the driver error."""


class TransientStorageError(StorageError):
    """A PostgreSQL failure worth retrying: serialization failure, deadlock, lost connection."""


class SchemaNotReadyError(StorageError):
    """The database has not been migrated: run ``eventstore migrate``."""


class AppendOnlyViolation(StorageError):
    """Someone tried to UPDATE, DELETE or TRUNCATE the event log, which the database forbids."""


class BrokerError(EventStoreError):
    """The Kafka-API broker refused or could not deliver a message."""


class EmitTimeout(EventStoreError):
    """No outcome arrived within the timeout; the event may still be decided later (same idempotency key)."""


class ClientClosedError(EventStoreError):
    """The client was closed while a call was waiting on it."""


class EmbeddedServerError(EventStoreError):
    """An embedded default server (PostgreSQL or tansu) could not be started."""


class ComponentFailedError(EventStoreError):
    """A background component (projector, publisher, subscriber) stopped with an error."""


class CoordinationError(EventStoreError):
    """Base class of lease, lock-order and deadlock errors."""


class LeaseNotHeldError(CoordinationError):
    """A renew or release by an agent that does not (or no longer) hold the lease."""


class LeaseTimeout(CoordinationError):
    """The lease could not be granted within the allowed wait."""


class LockOrderViolation(CoordinationError):
    """A lease was requested out of the global lock order while others were held."""

    def __init__(self, agent_id: str, requested: str, held: str) -> None:
        self.agent_id = agent_id
        self.requested = requested
        self.held = held
        super().__init__(
            f"agent {agent_id!r} asked for {requested!r} while holding {held!r}, which comes later in the "
            f"global lock order; release {held!r} first or take both with lease_many()"
        )


class DeadlockDetected(CoordinationError):
    """This waiter was chosen as the victim of a wait-for cycle; release your leases and retry."""


class AgentKilledError(CoordinationError):
    """The agent has been stopped by the kill switch; an operator must ``revive`` it."""
