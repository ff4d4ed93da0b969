"""Operations history as typed, server-only events: what an operator did to the pipeline (an offsets
reset) and what the projector raised an alert about (a retry loop that does not end). Appended to the
reserved ``ops-`` streams, so auditors see them next to every other event."""

from __future__ import annotations

from typing import ClassVar

from eventstore.core.events import Event

OFFSETS_STREAM = "ops-offsets"


class OpsEvent(Event):
    """Base of the operations events: written by the server only, never accepted from agents."""

    server_only: ClassVar[bool] = True
    abstract_event: ClassVar[bool] = True


class OffsetsReset(OpsEvent):
    """An operator dropped the stored offsets of a topic (recreated or truncated); who, why, and what."""

    topic: str
    group: str
    by: str
    reason: str
    previous: dict[str, int]


class ProjectorStalled(OpsEvent):
    """A projector has been retrying one batch for longer than the alert threshold."""

    group: str
    topic: str
    partitions: list[int]
    seconds: float
    attempts: int
    last_error: str
