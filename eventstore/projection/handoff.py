"""The hand-off from a projector to the publisher of its own process: what the batch just committed.

The projector holds every event it committed (``BatchResult.committed``: positions, chain links and
payloads, in commit order), so the publisher need not read them back from PostgreSQL. ``LocalCommits``
keeps those events, bounded, for the publisher to take from the next unpublished position on. It only
ever answers with a run that starts exactly there; anything it does not hold (another process's batch,
events dropped for the bound, a batch whose commit this process never saw confirmed) the publisher reads
from the log. Only events whose transaction committed are handed over: the projector calls the hand-off
after ``write_batch`` returned, which it does only after COMMIT succeeded.

A notification wakes the publisher at COMMIT, usually before the projector thread has handed the batch
over; ``take`` therefore waits (bounded) for the batches that were in flight when it was called, and
only then reports a miss.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from eventstore.core.records import RecordedEvent

Hand = Callable[[Sequence[RecordedEvent]], None]


def contiguous_runs(events: Sequence[RecordedEvent]) -> list[list[RecordedEvent]]:
    """``events`` cut where a position does not follow the previous one (a split batch may have let
    another process commit in between)."""
    if not events:
        return []
    first, last = events[0].position, events[-1].position
    if last - first == len(events) - 1:
        return [list(events)]  # the usual case: one batch, one run
    runs: list[list[RecordedEvent]] = [[events[0]]]
    for ev in events[1:]:
        if ev.position == runs[-1][-1].position + 1:
            runs[-1].append(ev)
        else:
            runs.append([ev])
    return runs


class LocalCommits:
    """Events this process committed and has not published yet, in runs of consecutive positions.

    Bounded by ``limit`` events: when the publisher falls behind (or is not leading), the oldest runs are
    dropped and the publisher reads those positions from the log instead."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._cond = threading.Condition()
        self._runs: deque[list[RecordedEvent]] = deque()
        self._held = 0
        self._started = 0
        self._finished = 0
        self._enabled = False
        self.dropped = 0
        # Benchmarks set a list here: (first position, last position, time.time()) per batch handed over.
        self.trace: list[tuple[int, int, float]] | None = None

    def enable(self, on: bool) -> None:
        """Keep hand-offs (while this process's publisher leads) or drop them (standby)."""
        with self._cond:
            self._enabled = on
            if not on:
                self._clear()

    def clear(self) -> None:
        with self._cond:
            self._clear()

    @property
    def held(self) -> int:
        return self._held

    @contextmanager
    def batch(self) -> Iterator[Hand]:
        """Around one batch transaction of the projector: yields the hand-off to call with what the batch
        committed, once it committed. A publisher waiting in ``take`` is woken when the block ends."""
        with self._cond:
            self._started += 1
        try:
            yield self._hand
        finally:
            with self._cond:
                self._finished += 1
                self._cond.notify_all()

    def _hand(self, events: Sequence[RecordedEvent]) -> None:
        runs = contiguous_runs(events)
        if self.trace is not None and events:
            self.trace.append((events[0].position, events[-1].position, time.time()))
        with self._cond:
            if not self._enabled:
                return
            for run in runs:
                self._runs.append(run)
                self._held += len(run)
            while self._held > self.limit:
                dropped = self._runs.popleft()
                self._held -= len(dropped)
                self.dropped += len(dropped)

    def take(self, after: int, limit: int, wait: float) -> tuple[list[RecordedEvent], int | None]:
        """Up to ``limit`` held events with consecutive positions from ``after + 1`` on; if the next
        position is not held (after waiting up to ``wait`` seconds for the batches in flight now),
        ``[]`` and the first held position above ``after`` (None: nothing held), which bounds what the
        publisher must read from the log."""
        with self._cond:
            target = self._started
            deadline = time.monotonic() + wait
            while True:
                self._drop_through(after)
                if self._runs and self._runs[0][0].position == after + 1:
                    return self._take(after, limit), None
                remaining = deadline - time.monotonic()
                if self._finished >= target or remaining <= 0:
                    return [], (self._runs[0][0].position if self._runs else None)
                self._cond.wait(remaining)

    def _drop_through(self, after: int) -> None:
        """Forget what is at or below ``after`` (published already, by us or a previous leader)."""
        runs = self._runs
        while runs and runs[0][-1].position <= after:
            self._held -= len(runs.popleft())
        if runs and runs[0][0].position <= after:
            cut = after + 1 - runs[0][0].position
            runs[0] = runs[0][cut:]
            self._held -= cut

    def _take(self, after: int, limit: int) -> list[RecordedEvent]:
        out: list[RecordedEvent] = []
        runs = self._runs
        while runs and len(out) < limit and runs[0][0].position == after + 1 + len(out):
            run = runs.popleft()
            room = limit - len(out)
            if len(run) > room:
                runs.appendleft(run[room:])
                run = run[:room]
            out += run
            self._held -= len(run)
        return out

    def _clear(self) -> None:
        self._runs.clear()
        self._held = 0
