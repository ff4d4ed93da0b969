"""The fault schedule (pure) and the injector that carries each fault out against real servers.

Faults: ``projector-kill`` (SIGKILL of the primary ``eventstore project`` process, which the supervisor
restarts), ``db-connections-kill`` (``pg_terminate_backend`` on every other session of the database),
``db-restart`` (the embedded PostgreSQL stopped for some seconds and started again on the same data;
only when the simulation started the servers itself), ``rebalance`` (a second projector joins the
group and later leaves it), ``hostile`` (one message of each hostile kind produced raw on the intake
topic), ``agent-kill`` (the coordinator's kill switch, revived a few seconds later).

A broker restart is not in the list: the embedded tansu keeps topics in memory, so a restarted broker
is a recreated cluster with empty topics. Messages acknowledged but not yet projected are gone, and
the projector's stored offsets are ahead of the new topics' ends; by design (issue 8, "no silent
skip") the projector then stops for an operator's decision instead of carrying on, so a broker
restart cannot be survived without an operator and is covered by tests/test_faults_broker.py instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from confluent_kafka import KafkaException, Producer

from eventstore.coordination import Coordinator
from eventstore.core.errors import EventStoreError
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedPostgres
from eventstore.kafka.config import producer_config
from eventstore.postgres.connection import Database
from eventstore.simulate.hostile import KINDS as HOSTILE_KINDS
from eventstore.simulate.hostile import hostile_message
from eventstore.simulate.processes import ProjectorSupervisor

log = logging.getLogger(__name__)
T = TypeVar("T")

FAULT_KINDS = ("projector-kill", "db-connections-kill", "rebalance", "hostile", "agent-kill", "db-restart")

TERMINATE_OTHERS = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
)


def plan(seconds: float, kinds: tuple[str, ...] = FAULT_KINDS, *, settle: float = 0.25,
         quiet_tail: float = 0.2, gap: float = 5.0) -> list[tuple[float, str]]:
    """When each fault fires: the kinds in order, evenly spread between ``settle`` and
    ``1 - quiet_tail`` of the run, repeated while slots at least ``gap`` seconds apart remain. Every
    kind fires at least once (the slots shrink below ``gap`` on a run too short for one round)."""
    if not kinds:
        return []
    start, end = seconds * settle, seconds * (1 - quiet_tail)
    slots = max(len(kinds), int((end - start) // gap) + 1)
    rounds = max(1, slots // len(kinds))
    count = rounds * len(kinds)
    step = (end - start) / max(1, count - 1) if count > 1 else 0.0
    return [(start + i * step, kinds[i % len(kinds)]) for i in range(count)]


@dataclass(frozen=True)
class FaultRecord:
    """One fault as it happened: seconds since the run started, kind, detail."""

    at: float
    kind: str
    detail: str
    until: float | None = None


@dataclass
class HostileSent:
    kind: str
    partition: int
    offset: int


@dataclass
class FaultInjector:
    """Carries out faults; everything it did is in ``records`` (for the report's time axis)."""

    settings: Settings
    supervisor: ProjectorSupervisor
    coordinator: Coordinator
    agent_ids: list[str]
    postgres: EmbeddedPostgres | None
    t0: float
    db_down_seconds: float = 8.0
    member_seconds: float = 6.0
    revive_after: float = 3.0
    records: list[FaultRecord] = field(default_factory=list)
    hostile: list[HostileSent] = field(default_factory=list)
    killed_agents: list[str] = field(default_factory=list)
    # (agent, database time just after the kill, database time just before the revive)
    kill_windows: list[tuple[str, object, object]] = field(default_factory=list)
    _next_agent: int = 0
    _timers: list[threading.Thread] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def fire(self, kind: str) -> None:
        actions: dict[str, Callable[[], str]] = {
            "projector-kill": self._projector_kill, "db-connections-kill": self._kill_connections,
            "db-restart": self._db_restart, "rebalance": self._rebalance, "hostile": self._hostile,
            "agent-kill": self._agent_kill,
        }
        at = self.now()
        try:
            detail = actions[kind]()
        except Exception as e:  # a fault that could not be injected is reported, not fatal
            log.exception("fault %s could not be injected", kind)
            detail = f"NOT INJECTED: {type(e).__name__}: {e}"
        self.records.append(FaultRecord(at, kind, detail))
        log.info("fault %s at %.1fs: %s", kind, at, detail)

    def join(self) -> None:
        for t in self._timers:
            t.join(60)

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        def run() -> None:
            time.sleep(delay)
            fn()
        t = threading.Thread(target=run, daemon=True)
        t.start()
        self._timers.append(t)

    # -- the faults ----------------------------------------------------------------------------
    def _projector_kill(self) -> str:
        pid = self.supervisor.primary.proc.pid
        self.supervisor.kill_primary()
        return f"SIGKILL projector pid {pid}; restarted"

    def _kill_connections(self) -> str:
        with Database(self.settings.require_database()).connect(autocommit=True) as conn:
            row = conn.execute(TERMINATE_OTHERS).fetchone()
        return f"pg_terminate_backend on {row[0] if row else 0} sessions"

    def _db_restart(self) -> str:
        pg = self.postgres
        if pg is None:
            raise RuntimeError("the database is not the simulation's own embedded server")
        pg.halt()
        started = self.now()

        def resume() -> None:
            pg.resume()
            self.records.append(FaultRecord(self.now(), "db-restart", "PostgreSQL started again"))

        self._later(self.db_down_seconds, resume)
        return f"PostgreSQL stopped at {started:.1f}s for {self.db_down_seconds:.0f}s"

    @staticmethod
    def _retrying(fn: Callable[[], T], timeout: float = 120.0) -> T:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return fn()
            except EventStoreError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _db_clock(self) -> object:
        with Database(self.settings.require_database()).connect(autocommit=True) as conn:
            row = conn.execute("SELECT clock_timestamp()").fetchone()
        return None if row is None else row[0]

    def _rebalance(self) -> str:
        self.supervisor.add_member()

        def leave() -> None:
            self.supervisor.remove_member()
            self.records.append(FaultRecord(self.now(), "rebalance", "second projector left the group"))

        self._later(self.member_seconds, leave)
        return f"second projector joined the group for {self.member_seconds:.0f}s"

    def _hostile(self) -> str:
        producer = Producer(producer_config(self.settings, **{"message.max.bytes": 1_048_576}))
        sent: list[HostileSent] = []
        errors: list[str] = []
        agent = self.agent_ids[0]
        for i, kind in enumerate(HOSTILE_KINDS):
            msg = hostile_message(kind, f"inventory-hostile{i}", agent)

            def delivered(err: object, m: object, kind: str = kind) -> None:
                if err is not None:
                    errors.append(f"{kind}: {err}")
                else:
                    sent.append(HostileSent(kind, int(m.partition()), int(m.offset())))  # type: ignore[attr-defined]

            try:
                producer.produce(self.settings.intake_topic, key=msg.key, value=msg.value, on_delivery=delivered)
            except KafkaException as e:
                errors.append(f"{kind}: {e}")
        producer.flush(30)
        self.hostile.extend(sent)
        return f"{len(sent)} hostile messages ({', '.join(s.kind for s in sent)})" + (
            f"; not produced: {errors}" if errors else "")

    def _agent_kill(self) -> str:
        agent = self.agent_ids[self._next_agent % len(self.agent_ids)]
        self._next_agent += 1
        self.coordinator.kill(agent, "simulated kill switch")
        self.killed_agents.append(agent)
        killed_at = self._db_clock()

        def revive() -> None:
            # The database may be down now (another fault): an operator would retry, so do we.
            revived_at = self._retrying(self._db_clock)
            self._retrying(lambda: self.coordinator.revive(agent))
            self.kill_windows.append((agent, killed_at, revived_at))
            self.records.append(FaultRecord(self.now(), "agent-kill", f"{agent} revived"))

        self._later(self.revive_after, revive)
        return f"kill switch on {agent}"
