"""The projector's batch as data (pure, no I/O): the intake messages it took, what each one parsed to, and
what the batch decided (committed events, outcomes, dead letters, the offsets to store and where to seek)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from eventstore.core.decisions import Candidate
from eventstore.core.events import Event
from eventstore.core.outcomes import EmitResult, Outcome
from eventstore.core.records import EnvelopeFields, RecordedEvent
from eventstore.wire.envelope import Headers

_new = object.__new__


@dataclass(frozen=True)
class IntakeMessage:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def intake_messages(msgs: Sequence[Any]) -> list[IntakeMessage]:
    """The consumer's messages that carry no error, as IntakeMessages (the same objects the constructor
    builds, without the frozen ``__init__``'s setattr per field: this runs once per consumed message).
    ``msgs`` are confluent_kafka Messages; one with an error (end of partition, ...) is left out."""
    out = []
    for m in msgs:
        if m.error() is None:
            im: IntakeMessage = _new(IntakeMessage)
            im.__dict__.update(partition=m.partition(), offset=m.offset(), key=m.key(), value=m.value())
            out.append(im)
    return out


@dataclass(frozen=True)
class DeadLetter:
    message: IntakeMessage
    reason: str


@dataclass
class BatchResult:
    committed: list[RecordedEvent] = field(default_factory=list)
    results: list[EmitResult] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    next_offsets: dict[int, int] = field(default_factory=dict)
    # Partitions where this batch was behind the stored offsets (replay or zombie): seek there.
    behind: dict[int, int] = field(default_factory=dict)
    # Partitions cut at a hole in the offsets (core/offsetorder.py): seek back to this offset.
    rewind: dict[int, int] = field(default_factory=dict)
    rejections: list[Event] = field(default_factory=list)

    def count(self, status: Outcome) -> int:
        return sum(1 for r in self.results if r.status is status)


@dataclass(frozen=True)
class Parsed(Candidate[EnvelopeFields]):
    """A message that passed the boundary: the candidate the decision takes (envelope, intent hash, signature
    part), with what the append needs (canonical payload JSON and the payload as the event class dumps it)."""

    message: IntakeMessage = field(kw_only=True)
    payload_json: str = field(kw_only=True)
    payload: dict[str, Any] = field(kw_only=True)


def dead_letter_headers(d: DeadLetter, topic: str) -> Headers:
    return [
        ("es-dead-letter-reason", d.reason.encode()[:4000]),
        ("es-source", json.dumps({"topic": topic, "partition": d.message.partition,
                                  "offset": d.message.offset}).encode()),
    ]
