"""Emitted events waiting for their outcome: the handle an emit returns and the table that resolves it.

An emit must cost the agent a few microseconds, so a handle is a plain slotted object: no
``concurrent.futures.Future`` (whose ``threading.Condition`` costs more than the rest of the handle)
until someone asks for one (:attr:`EmitHandle.future`); a :meth:`EmitHandle.result` that must block waits
on a plain lock held until the outcome is settled. A handle whose outcome arrives before anyone waits
gets neither. One lock guards the whole table; the
outcome listener settles a whole wake-up's results at once (Futures are completed, and their callbacks
run, outside the lock), and ``emit_many`` adds a whole batch under one acquisition.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

from eventstore.core.errors import ClientClosedError, EmitTimeout
from eventstore.core.ids import uuid_of
from eventstore.core.outcomes import EmitResult

R = TypeVar("R")


class EmitHandle:
    """An emitted event whose outcome may still be pending."""

    __slots__ = ("_error", "_future", "_id", "_key", "_result", "_since", "_table", "_waiter", "idempotency_key",
                 "stream")

    def __init__(self, event_id: uuid.UUID | None, stream: str, idempotency_key: str, table: PendingOutcomes,
                 id_text: str | None = None) -> None:
        # The table's key is the id's canonical text; the UUID object is made on first use (event_id) when
        # the SDK gives only the text (an emit needs none).
        if id_text is None:
            if event_id is None:
                raise TypeError("EmitHandle needs the event id or its canonical text")
            id_text = str(event_id)
        self._id = event_id
        self._key = id_text
        self.stream = stream
        self.idempotency_key = idempotency_key
        self._table = table
        self._since = 0.0  # when it was added or last re-checked (time.monotonic)
        self._result: EmitResult | None = None
        self._error: BaseException | None = None
        self._future: Future[EmitResult] | None = None
        self._waiter: threading.Lock | None = None  # held until settled, made when result() must block

    @property
    def event_id(self) -> uuid.UUID:
        """The emitted event's id."""
        u = self._id
        if u is None:
            u = self._id = uuid_of(self._key)
        return u

    def done(self) -> bool:
        return self._result is not None or self._error is not None

    @property
    def future(self) -> Future[EmitResult]:
        """A Future of the outcome (made on first use), for callbacks or ``asyncio.wrap_future``."""
        return self._table.future_of(self)

    def result(self, timeout: float | None = 10.0) -> EmitResult:
        """Wait for the decision; EmitTimeout if none arrives (retry with the same idempotency key). After
        a timeout the listener forgets the handle (bounded memory); ``client.outcome(event_id)`` still
        reads the decision later."""
        if self._result is not None:
            return self._result
        if self._future is None:  # no Future asked for (none to cancel): wait on a plain lock instead
            waiter = self._table.waiter_of(self)
            if waiter is not None:
                if waiter.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
                    waiter.release()  # the next thread waiting for this handle wakes too
                elif not self.done():
                    self._table.forget(self._key)
                    raise self._timed_out(timeout)
            if self._result is not None:
                return self._result
            if self._error is not None:
                raise self._error
        try:
            return self.future.result(timeout)
        except FutureTimeout as e:
            self._table.forget(self._key)
            raise self._timed_out(timeout) from e

    def _timed_out(self, timeout: float | None) -> EmitTimeout:
        note = self._table.notes.pop(self._key, None)
        return EmitTimeout(
            f"no outcome for event {self.event_id} on stream {self.stream!r} within {timeout}s; is a "
            f"projector running? Re-emit with idempotency_key={self.idempotency_key!r} to be safe"
            + ("" if note is None else f". Refused envelopes naming this event id, not signed by this client's "
               f"credential (forged, or the credential is wrong: check its secret): {note}"))


def _complete(fut: Future[EmitResult], result: EmitResult | None, error: BaseException | None) -> None:
    with contextlib.suppress(InvalidStateError):  # a caller may have cancelled it
        if error is not None:
            fut.set_exception(error)
        elif result is not None:
            fut.set_result(result)


class PendingOutcomes:
    """The handles still waiting, by the canonical text of their event id (what the outcome lookup
    returns, so no UUID is parsed or hashed per outcome), oldest first (insertion order is time order: a
    re-checked handle moves to the end). Bounded by ``max_pending``: beyond it the oldest is let go with
    EmitTimeout."""

    def __init__(self, max_pending: int = 100_000) -> None:
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._pending: dict[str, EmitHandle] = {}
        # Identity refusals naming a pending id that may not settle it (the listener's), for its timeout error.
        self.notes: dict[str, str] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def add(self, handle: EmitHandle, now: float | None = None) -> None:
        """Wait for one handle's outcome (``now``: time.monotonic() if the caller has it)."""
        with self._lock:
            handle._since = time.monotonic() if now is None else now
            self._pending[handle._key] = handle
            evicted = self._evict() if len(self._pending) > self._max_pending else None
        if evicted:
            self._complete(evicted)

    def add_many(self, handles: Sequence[EmitHandle]) -> None:
        """Wait for a batch's outcomes, under one lock acquisition."""
        with self._lock:
            now = time.monotonic()
            pending = self._pending
            for h in handles:
                h._since = now
                pending[h._key] = h
            evicted = self._evict() if len(pending) > self._max_pending else None
        if evicted:
            self._complete(evicted)

    def _evict(self) -> list[EmitHandle]:
        """With the lock held: let the oldest go beyond the bound (oldest first: insertion order)."""
        out = []
        while len(self._pending) > self._max_pending:
            old = self._pending.pop(next(iter(self._pending)))
            old._error = EmitTimeout(
                f"more than {self._max_pending} outcomes pending; stopped waiting for the oldest "
                "(look it up with client.outcome(event_id) or re-emit with the same idempotency key)")
            out.append(old)
        return out

    @staticmethod
    def _complete(settled: Iterable[EmitHandle]) -> None:
        """Complete the Futures of settled handles that have one and wake their blocked ``result()`` calls;
        never under the lock (callbacks run here and may emit again). Each handle is settled once: it is
        taken out of the table under the lock first."""
        for h in settled:
            if h._future is not None:
                _complete(h._future, h._result, h._error)
            if h._waiter is not None:
                h._waiter.release()

    def settle(self, results: Iterable[EmitResult]) -> None:
        """Outcomes: resolve the handles still waiting for them."""
        self._resolve([(str(r.event_id), r) for r in results])

    def settle_rows(self, rows: Mapping[str, R], result: Callable[[uuid.UUID, R], EmitResult]) -> None:
        """Outcome rows keyed by event id text, as read from the database: ``result`` makes each waiting
        handle's EmitResult (with the handle's own UUID) outside the lock."""
        with self._lock:
            waiting = [h for h in map(self._pending.get, rows) if h is not None]
        self._resolve([(h._key, result(h.event_id, rows[h._key])) for h in waiting])

    def _resolve(self, results: list[tuple[str, EmitResult]]) -> None:
        with_future: list[EmitHandle] = []
        with self._lock:
            pop = self._pending.pop
            for key, r in results:
                h = pop(key, None)
                if h is not None:
                    h._result = r
                    if h._future is not None or h._waiter is not None:
                        with_future.append(h)
        self._complete(with_future)

    def fail(self, event_id: uuid.UUID | str, error: BaseException) -> None:
        """The event will get no outcome (the broker did not take it): its waiter gets ``error``."""
        with self._lock:
            h = self._pending.pop(str(event_id), None)
            if h is None:
                return
            h._error = error
        self._complete([h])

    def prune_notes(self, keep: int = 10_000) -> None:
        """Drop the notes of handles no longer pending (settled or given up), then the oldest beyond
        ``keep``: the notes of handles still waiting are kept for their timeout error."""
        with self._lock:
            notes = self.notes
            for k in [k for k in notes if k not in self._pending]:
                del notes[k]
            for k in list(notes)[:max(0, len(notes) - keep)]:
                del notes[k]

    def forget(self, event_id: uuid.UUID | str) -> None:
        """Stop waiting for an event's outcome (its caller gave up)."""
        with self._lock:
            self._pending.pop(str(event_id), None)

    def waiter_of(self, h: EmitHandle) -> threading.Lock | None:
        """A lock held until ``h`` is settled (made on first use; a blocked ``result()`` waits on it instead
        of a Future, which costs about six times more and 11 tracked objects), or None once ``h`` is settled."""
        with self._lock:
            if h._result is not None or h._error is not None:
                return None
            if h._waiter is None:
                waiter = threading.Lock()
                waiter.acquire()
                h._waiter = waiter
            return h._waiter

    def future_of(self, h: EmitHandle) -> Future[EmitResult]:
        with self._lock:
            if h._future is None:
                h._future = Future()
                if h._result is not None or h._error is not None:  # decided before anyone asked
                    _complete(h._future, h._result, h._error)
            return h._future

    def waiting(self, ids: Iterable[str]) -> list[str]:
        """Those of ``ids`` still waiting."""
        with self._lock:
            return [i for i in ids if i in self._pending]

    def oldest(self, limit: int) -> list[str]:
        with self._lock:
            return [eid for eid, _ in zip(self._pending, range(limit), strict=False)]

    def stale(self, cutoff: float, limit: int) -> list[str]:
        """Up to ``limit`` ids waiting since before ``cutoff``: O(stale), the scan stops at the first
        fresh handle (insertion order is time order)."""
        out: list[str] = []
        with self._lock:
            for eid, h in self._pending.items():
                if h._since > cutoff or len(out) >= limit:
                    break
                out.append(eid)
        return out

    def recheck_later(self, ids: Iterable[str]) -> None:
        """Move these (just looked up, still undecided) to the end of the order, stamped now."""
        with self._lock:
            now = time.monotonic()
            for eid in ids:
                h = self._pending.pop(eid, None)
                if h is not None:
                    h._since = now
                    self._pending[eid] = h

    def close(self) -> None:
        """The client closed: every waiter gets ClientClosedError."""
        with self._lock:
            pending, self._pending = self._pending, {}
            for h in pending.values():
                h._error = ClientClosedError("the client was closed before the outcome arrived")
        self._complete(pending.values())
