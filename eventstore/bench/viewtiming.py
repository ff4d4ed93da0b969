"""Timing of a subscriber's local view for ``eventstore bench subscribers``: when each event became visible,
when its committed message was produced and fetched, and the split of emit -> visible at those marks."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
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
        self.noticed_at: dict[int, float] = {}  # woken: when the commit notice that brought it arrived
        self._notice: float | None = None

    def _noticed(self, notes: list[Any]) -> None:
        self._notice = time.time()

    def _wake(self, wait: float) -> bool:
        self._notice = None
        before = self.last
        applied = super()._wake(wait)
        if applied and self._notice is not None:
            for position in range(before + 1, self.last + 1):
                self.noticed_at[position] = self._notice
        return applied

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
    return _cut(SPLIT, sent_wall, lambda p: (view.recorded.get(p), sub.produced.get(p), sub.fetched_at.get(p),
                                             view.visible_wall.get(p)))


def split_woken(sent_wall: dict[int, float], view: TimedView, sub: TimedSubscriber) -> list[tuple[str, Latency]]:
    """Emit -> visible of a woken subscriber cut at the database's recorded_at and the commit notice's arrival
    (events it applied from Kafka or the idle check have no notice time and are left out of the split)."""
    return _cut(SPLIT_WOKEN, sent_wall, lambda p: (view.recorded.get(p), sub.noticed_at.get(p),
                                                   view.visible_wall.get(p)))


def _cut(names: tuple[str, ...], sent_wall: dict[int, float],
         marks_of: Callable[[int], tuple[float | None, ...]]) -> list[tuple[str, Latency]]:
    parts: dict[str, list[float]] = {k: [] for k in names}
    for position, emitted in sent_wall.items():
        marks = (emitted, *marks_of(position))
        if any(m is None for m in marks):
            continue
        for name, a, b in zip(names, marks, marks[1:], strict=False):
            parts[name].append(max(0.0, float(b) - float(a)))  # type: ignore[arg-type]
    return [(name, Latency(sorted(v), 0)) for name, v in parts.items()]


SPLIT = ("emit -> recorded_at (agent, intake topic, projector up to its commit's head lock)",
         "recorded_at -> produced (commit, hand-off to the publisher, encode, produce)",
         "produced -> fetched (broker, consumer fetch wait)",
         "fetched -> visible (decode, chain check, log lookup, apply)")
SPLIT_WOKEN = ("emit -> recorded_at (agent, intake topic, projector up to its commit's head lock)",
               "recorded_at -> noticed (commit, NOTIFY delivered to the subscriber's LISTEN)",
               "noticed -> visible (one read of the log, chain check, apply)")
