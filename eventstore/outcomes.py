"""What an agent learns about an emitted event."""

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


@dataclass(frozen=True)
class EmitResult:
    """The projector's decision on one event.

    ``version`` and ``position`` are the committed event's (for DUPLICATE: the original's);
    ``current_version`` is the stream's version at decision time (set on CONFLICT); ``reason`` says why
    an event was not committed.
    """

    event_id: uuid.UUID
    status: Outcome
    stream: str | None = None
    version: int | None = None
    position: int | None = None
    current_version: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """True when the event's effect exists exactly once (committed now or before)."""
        return self.status in (Outcome.COMMITTED, Outcome.DUPLICATE)

    def to_wire(self) -> list[Any]:
        return [str(self.event_id), self.status.value, self.stream, self.version, self.position,
                self.current_version, self.reason]

    @classmethod
    def from_wire(cls, row: list[Any]) -> EmitResult:
        return cls(uuid.UUID(row[0]), Outcome(row[1]), row[2], row[3], row[4], row[5], row[6])
