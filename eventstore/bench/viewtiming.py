"""Timing of a subscriber's local view for ``eventstore bench subscribers``: when each event became visible,
when its committed message was produced and fetched, and the split of emit -> visible at those marks."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from consumers.subscriber import Subscriber
from consumers.views import LocalView
from eventstore.bench.writepath import Latency
from eventstore.core.records import RecordedEvent
from eventstore.examples.inventory import quantity_reducer


class TimedView(LocalView):
    """A LocalView that notes when each event became visible (after ``apply_batch`` returned), on the
    monotonic clock and on the wall clock (the database's ``recorded_at`` and Kafka's timestamps are
    wall-clock times of the same machine), and each event's ``recorded_at``."""

    def __init__(self) -> None:
        super().__init__(quantity_reducer)
        self.seen: dict[uuid.UUID, float] = {}
        self.visible_wall: dict[int, float] = {}
        self.recorded: dict[int, float] = {}

    def apply_batch(self, events: Sequence[RecordedEvent], position: int) -> None:
        super().apply_batch(events, position)
        now, wall = time.perf_counter(), time.time()
        for ev in events:
            self.seen[ev.event_id] = now
            self.visible_wall[ev.position] = wall
            self.recorded[ev.position] = ev.recorded_at.timestamp()


class TimedSubscriber(Subscriber):
    """A Subscriber that notes, for each committed message, when the publisher produced it (the message's
    CreateTime) and when the consumer handed it over (the wall clock as the fetched batch arrived)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.produced: dict[int, float] = {}
        self.fetched_at: dict[int, float] = {}

    def _fetched(self, messages: list[Any]) -> None:
        now = time.time()
        for m in messages:
            if m.error() is None:
                position = dict(m.headers() or []).get("es-position")
                if position is not None:
                    self.produced[int(position)] = m.timestamp()[1] / 1000
                    self.fetched_at[int(position)] = now


def split(sent_wall: dict[int, float], view: TimedView, sub: TimedSubscriber) -> list[tuple[str, Latency]]:
    """Emit -> visible cut at the database's recorded_at, the publisher's produce and the consumer's hand-over."""
    parts: dict[str, list[float]] = {k: [] for k in SPLIT}
    for position, emitted in sent_wall.items():
        marks = (emitted, view.recorded.get(position), sub.produced.get(position), sub.fetched_at.get(position),
                 view.visible_wall.get(position))
        if any(m is None for m in marks):
            continue
        for name, a, b in zip(SPLIT, marks, marks[1:], strict=False):
            parts[name].append(max(0.0, float(b) - float(a)))  # type: ignore[arg-type]
    return [(name, Latency(sorted(v), 0)) for name, v in parts.items()]


SPLIT = ("emit -> recorded_at (agent, intake topic, projector up to its commit's head lock)",
         "recorded_at -> produced (commit, hand-off to the publisher, encode, produce)",
         "produced -> fetched (broker, consumer fetch wait)",
         "fetched -> visible (decode, chain check, log lookup, apply)")
