"""Simulated agents: each reads a SKU's committed version, emits an adjustment with that
``expected_version`` and an idempotency key, and keeps a ledger of what it was told.

The ledger is what the promise checks compare the database with: an agent believes a key committed
only when the projector said COMMITTED (or DUPLICATE, pointing at the original), so the sum of the
deltas it believes committed must equal the read model (no lost update, exactly-once effect). A key
whose outcome did not arrive (EmitTimeout, a broker or database error) is re-emitted with the same
key and the same event until it is decided: that is the retry the SDK promises to be safe.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from eventstore.core.errors import EventStoreError
from eventstore.core.outcomes import EmitResult, Outcome, ReasonCode
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryAdjusted, stream_for
from eventstore.sdk.client import AgentClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Committed:
    """A key the agent was told is committed, and what it committed."""

    key: str
    sku: str
    delta: int
    version: int
    position: int


@dataclass
class Ledger:
    """One agent's record of outcomes; read by the checks once the agent has stopped."""

    committed: dict[str, Committed] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    timeouts: int = 0
    killed_rejections: int = 0
    duplicate_checks: int = 0
    # Broken promises the agent itself saw, one line each (e.g. a version that skipped).
    violations: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class SimAgent:
    """One agent in its own thread, with its own AgentClient."""

    def __init__(self, agent_id: str, settings: Settings, skus: list[str], *, seed: int,
                 emit_timeout: float = 4.0, recheck_share: float = 0.1, credential: str | None = None) -> None:
        self.agent_id = agent_id
        self.credential = credential
        self.settings = settings
        self.skus = skus
        self.rng = random.Random(seed)
        self.emit_timeout = emit_timeout
        self.recheck_share = recheck_share
        self.ledger = Ledger()
        self._stop = threading.Event()
        self._client: AgentClient | None = None
        self._thread = threading.Thread(target=self._run, name=f"sim-{agent_id}", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> SimAgent:
        self._client = AgentClient(self.agent_id, self.settings, ensure_topic=False, credential=self.credential)
        self._thread.start()
        return self

    def stop_emitting(self) -> None:
        """Start no new key; the key in hand is still driven to a decision."""
        self._stop.set()

    def join(self, timeout: float) -> None:
        """Wait for the thread; close the client once it has ended (not before: it may still emit)."""
        self._thread.join(timeout)
        if not self._thread.is_alive() and self._client is not None:
            self._client.close()

    @property
    def listener_error(self) -> BaseException | None:
        """Why the client's outcome listener stopped, if it did (it must survive every fault)."""
        return None if self._client is None else self._client.outcome_listener_error

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        n = 0
        try:
            while not self._stop.is_set():
                n += 1
                sku = self.rng.choice(self.skus)
                delta = self.rng.choice((-3, -2, -1, 1, 2, 3))
                self._drive(f"{self.agent_id}-k{n}", sku, delta, deadline=None)
        except BaseException as e:  # kept for the report; a dead agent thread is a finding
            self.error = e
            log.exception("simulated agent %s stopped", self.agent_id)

    def _drive(self, key: str, sku: str, delta: int, deadline: float | None) -> None:
        """Emit until the key is decided: committed, or rejected (kill switch); conflicts re-read."""
        client = self._client
        if client is None:
            raise RuntimeError("agent not started")
        stream = stream_for(sku)
        expected: int | None = None
        stop_deadline: float | None = deadline
        while True:
            if self._stop.is_set() and stop_deadline is None:
                stop_deadline = time.monotonic() + 90.0  # finish the key in hand, within reason
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                with self.ledger.lock:
                    self.ledger.unresolved.append(key)
                return
            try:
                if expected is None:
                    expected = client.stream_version(stream)
                result = client.emit_and_wait(InventoryAdjusted(sku=sku, delta=delta), stream,
                                              expected_version=expected, idempotency_key=key,
                                              timeout=self.emit_timeout)
            except EventStoreError as e:  # EmitTimeout, broker or database away: same key again
                with self.ledger.lock:
                    self.ledger.timeouts += 1
                log.info("%s: %s; re-emitting %s", self.agent_id, type(e).__name__, key)
                time.sleep(0.2)
                continue
            with self.ledger.lock:
                self.ledger.statuses[result.status.value] += 1
            if result.status is Outcome.CONFLICT:
                expected = None  # re-read and decide again (the key was not consumed)
                continue
            if result.status is Outcome.REJECTED:
                if result.reason_code is ReasonCode.AGENT_KILLED:
                    with self.ledger.lock:
                        self.ledger.killed_rejections += 1
                    time.sleep(0.5)  # stopped by the kill switch: this intent is dropped
                    return
                with self.ledger.lock:
                    self.ledger.violations.append(f"{key}: unexpected rejection {result.reason_code}: "
                                                  f"{result.reason}")
                return
            self._record(key, sku, delta, expected, result)
            if self.rng.random() < self.recheck_share:
                self._recheck(key, sku, delta, expected, result)
            return

    def _record(self, key: str, sku: str, delta: int, expected: int, result: EmitResult) -> None:
        version, position = result.version, result.position
        with self.ledger.lock:
            if version is None or position is None:
                self.ledger.violations.append(f"{key}: {result.status} without version/position")
                return
            if result.status is Outcome.COMMITTED and version != expected + 1:
                self.ledger.violations.append(f"{key}: emitted at expected_version {expected} but "
                                              f"committed as version {version} (lost update)")
            self.ledger.committed[key] = Committed(key, sku, delta, version, position)

    def _recheck(self, key: str, sku: str, delta: int, expected: int, original: EmitResult) -> None:
        """Re-emit a committed key: the answer must be DUPLICATE pointing at the original."""
        client = self._client
        if client is None:
            return
        for _ in range(20):
            try:
                again = client.emit_and_wait(InventoryAdjusted(sku=sku, delta=delta), stream_for(sku),
                                             expected_version=expected, idempotency_key=key,
                                             timeout=self.emit_timeout)
            except EventStoreError:
                time.sleep(0.2)
                continue
            with self.ledger.lock:
                self.ledger.duplicate_checks += 1
                self.ledger.statuses[again.status.value] += 1
                if again.status is not Outcome.DUPLICATE or again.position != original.position:
                    self.ledger.violations.append(
                        f"{key}: re-emitting a committed key returned {again.status} at position "
                        f"{again.position}, expected duplicate of position {original.position}")
            return
