"""Lock history as typed events: every state change of a lease is appended to the event log in the
same transaction as the change, so auditors and subscribers see it like any other event."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from eventstore.core.events import Event


class LockEvent(Event):
    """Base of the lock-history events: appended by the coordinator only, never accepted from agents."""

    server_only: ClassVar[bool] = True
    abstract_event: ClassVar[bool] = True


class LeaseGranted(LockEvent):
    """A lease was granted (``waited_seconds`` on the database clock, 0 when not queued)."""

    resource: str
    agent_id: str
    mode: str
    token: int
    ttl_seconds: float
    waited_seconds: float = 0.0


class LeaseDenied(LockEvent):
    """A request was refused: busy (non-blocking try) or its wait ran out."""

    resource: str
    agent_id: str
    mode: str
    reason: str
    held_by: list[str]


class LeaseWaited(LockEvent):
    """A request waited in the FIFO queue of a busy resource. Since migration 0013 it is chained when the
    wait ENDS, in the commit that ended it (grant, hand-off, giving up, kill, purge), with when it began
    (``enqueued_at``, database clock), how long it lasted, its queue place and how it ended; older records
    (chained when the wait began) have none of these."""

    resource: str
    agent_id: str
    mode: str
    held_by: list[str]
    expected_seconds: float | None = None
    enqueued_at: datetime | None = None
    waited_seconds: float | None = None
    queue_seq: int | None = None
    ended: str | None = None  # granted, handed_off, left, killed, revoked, purged


class LeaseRenewed(LockEvent):
    """The holder extended its lease by its TTL."""

    resource: str
    agent_id: str
    token: int
    ttl_seconds: float


class LeaseReleased(LockEvent):
    """The holder released its lease."""

    resource: str
    agent_id: str
    token: int
    held_seconds: float


class LeaseExpired(LockEvent):
    """A holder's TTL ran out on the database clock; its token was fenced."""

    resource: str
    agent_id: str
    token: int
    fence_token: int


class LeaseRevoked(LockEvent):
    """A lease was taken away (kill switch or deadlock victim); its token was fenced."""

    resource: str
    agent_id: str
    token: int
    fence_token: int
    reason: str


class DeadlockFound(LockEvent):
    """A wait-for cycle was found; ``victim`` was aborted with DeadlockDetected."""

    cycle: list[str]
    victim: str
    resource: str
    rule: str


class WaitExceeded(LockEvent):
    """An agent waited longer than twice its declared expected duration."""

    resource: str
    agent_id: str
    waited_seconds: float
    expected_seconds: float
    held_by: list[str]


class AgentKilled(LockEvent):
    """The kill switch stopped an agent: its leases are revoked and its new events are rejected."""

    agent_id: str
    reason: str
    revoked: list[str]


class AgentRevived(LockEvent):
    """An operator revived a killed agent."""

    agent_id: str


class LockOrderViolated(LockEvent):
    """A lease was requested out of the global lock order while a later resource was held."""

    agent_id: str
    requested: str
    held: str


LOCK_EVENTS: tuple[type[Event], ...] = (
    LeaseGranted, LeaseDenied, LeaseWaited, LeaseRenewed, LeaseReleased, LeaseExpired, LeaseRevoked,
    DeadlockFound, WaitExceeded, AgentKilled, AgentRevived, LockOrderViolated,
)
