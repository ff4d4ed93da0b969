"""What an agent learns about an emitted event: the status, and for every event that did not commit,
a stable reason code (select by code, never by the human-readable reason text)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    COMMITTED = "committed"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    REJECTED = "rejected"


class ReasonCode(StrEnum):
    """Why an event did not commit; stored with every such outcome and documented in docs/agents.md."""

    DUPLICATE = "duplicate"  # the key was committed before; the result points at the original
    KEY_REUSED = "key_reused"  # the key was committed for a different event
    AGENT_KILLED = "agent_killed"  # the kill switch stopped the agent
    LEASE_UNKNOWN = "lease_unknown"  # the event's lease token was never granted for that resource
    LEASE_STALE = "lease_stale"  # the token is older than the resource's newest grant
    VERSION_CONFLICT = "version_conflict"  # expected_version did not match the stream
    INVALID = "invalid"  # undecodable, unknown type, invalid payload, refused by a read model or the database
    # Identity and permissions (docs/security.md)
    UNKNOWN_AGENT = "unknown_agent"  # the envelope's credential is not registered
    BAD_SIGNATURE = "bad_signature"  # unsigned, a wrong MAC, or a credential of another agent
    CREDENTIAL_REVOKED = "credential_revoked"  # the credential was rotated or the agent removed
    NOT_PERMITTED = "not_permitted"  # the stream or event type is outside the agent's permissions
    EVENT_ID_TAKEN = "event_id_taken"  # another agent's event already has this event id
    # Guarded streams: the write needs the agent's current exclusive lease at commit time
    NO_LEASE = "no_lease"  # the event carries no lease (or one on another resource) and nobody else holds it
    NOT_HOLDER = "not_holder"  # another agent holds the resource
    LEASE_EXPIRED = "lease_expired"  # the agent's lease expired by the database clock before the commit


@dataclass(frozen=True)
class EmitResult:
    """The projector's decision on one event.

    ``version`` and ``position`` are the committed event's (for DUPLICATE: the original's);
    ``current_version`` is the stream's version at decision time (set on CONFLICT); ``reason`` says why
    an event was not committed and ``reason_code`` is the stable code of that reason.
    """

    event_id: uuid.UUID
    status: Outcome
    stream: str | None = None
    version: int | None = None
    position: int | None = None
    current_version: int | None = None
    reason: str | None = None
    reason_code: ReasonCode | None = None

    @property
    def ok(self) -> bool:
        """True when the event's effect exists exactly once (committed now or before)."""
        return self.status in (Outcome.COMMITTED, Outcome.DUPLICATE)

    def to_wire(self) -> list[Any]:
        """The positional notification form (see docs/wire-format.md)."""
        return [str(self.event_id), self.status.value, self.stream, self.version, self.position,
                self.current_version, self.reason, None if self.reason_code is None else self.reason_code.value]

    @classmethod
    def from_wire(cls, row: list[Any]) -> EmitResult:
        code = row[7] if len(row) > 7 else None
        return cls(uuid.UUID(row[0]), outcome_of(row[1]), row[2], row[3], row[4], row[5], row[6],
                   None if code is None else reason_of(code))


# Wire text -> member by one dict look-up: calling the enum class (``Outcome(text)``) costs a
# metaclass call per field, paid for every outcome an agent receives.
_OUTCOMES: dict[object, Outcome] = {o.value: o for o in Outcome}
_REASONS: dict[object, ReasonCode] = {c.value: c for c in ReasonCode}


def outcome_of(text: object) -> Outcome:
    """The Outcome named by its wire text; ValueError for any other value (as ``Outcome(text)``)."""
    try:
        return _OUTCOMES[text]
    except (KeyError, TypeError):
        raise ValueError(f"{text!r} is not an outcome ({', '.join(o.value for o in Outcome)})") from None


def reason_of(text: object) -> ReasonCode:
    """The ReasonCode named by its wire text; ValueError for any other value."""
    try:
        return _REASONS[text]
    except (KeyError, TypeError):
        raise ValueError(f"{text!r} is not a reason code") from None
