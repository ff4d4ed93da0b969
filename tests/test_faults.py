"""Faults that heal by themselves (issue 8, item 4), on real servers: the database restarted during a
run, and every database connection killed mid-run. Agents keep emitting throughout; afterwards every
key is committed exactly once, the read model and a subscriber's view equal the fold of the log,
positions and versions are gapless, and no component (projector, publisher, subscriber, outcome
listeners, coordinator) stopped."""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from consumers.subscriber import Subscriber
from eventstore.coordination import Coordinator
from eventstore.core.errors import EventStoreError
from eventstore.core.outcomes import Outcome
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedPostgres
from eventstore.examples.inventory import STREAM_PREFIX, InventoryAdjusted, quantity_reducer, stream_for
from eventstore.postgres.migrate import upgrade
from eventstore.projection.projector import Projector
from eventstore.sdk.client import AgentClient
from eventstore.simulate import checks
from eventstore.simulate.agents import SimAgent
from eventstore.simulate.faults import TERMINATE_OTHERS
from eventstore.simulate.runner import RecordingView
from tests.fix_projector import wait_until
from tests.fix_servers import Servers


@dataclass
class LeaseWorkers:
    """Two agents taking turns on one lease (waiters are woken by the coordinator's LISTEN thread);
    a lease held by both at once is counted as a violation."""

    coordinator: Coordinator
    resource: str = "fault-test-resource"
    grants: int = 0
    failures: int = 0
    overlaps: int = 0
    _inside: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> LeaseWorkers:
        for name in ("lease-a", "lease-b"):
            t = threading.Thread(target=self._work, args=(name,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _work(self, agent: str) -> None:
        while not self._stop.is_set():
            try:
                with self.coordinator.lease(self.resource, agent_id=agent, ttl=5, wait=3):
                    with self._lock:
                        self._inside += 1
                        self.overlaps += self._inside > 1
                    time.sleep(0.02)
                    with self._lock:
                        self._inside -= 1
                        self.grants += 1
            except EventStoreError:  # the database is away: try again, as an agent would
                with self._lock:
                    self.failures += 1
                self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(20)


@dataclass
class Run:
    settings: Settings
    prefix: str
    projector: Projector
    subscriber: Subscriber
    view: RecordingView
    agents: list[SimAgent]
    leases: LeaseWorkers
    seen: list[checks.SeenEvent]

    def committed(self) -> int:
        return sum(len(a.ledger.committed) for a in self.agents)


@pytest.fixture
def harness() -> Iterator[Callable[[Settings], Run]]:
    started: list[Run] = []

    def start(settings: Settings) -> Run:
        prefix = f"f{uuid.uuid4().hex[:6]}-"
        projector = Projector(settings).start()
        assert projector.ready.wait(60), "the projector was not assigned its partitions"
        seen: list[checks.SeenEvent] = []
        view = RecordingView(seen, quantity_reducer, lambda s: s.startswith(STREAM_PREFIX + prefix))
        # idle_check: once traffic stops, the subscriber re-reads the log on its (possibly killed)
        # connection within half a second, which finish_and_check waits for.
        subscriber = Subscriber(f"faults-{prefix}", view=view, settings=settings, idle_check=0.5).start()
        agents = [SimAgent(f"fault-agent-{i}", settings, [f"{prefix}{j}" for j in range(3)], seed=i,
                           emit_timeout=3.0).start() for i in range(4)]
        leases = LeaseWorkers(Coordinator(settings)).start()
        run = Run(settings, prefix, projector, subscriber, view, agents, leases, seen)
        started.append(run)
        return run

    yield start
    for run in started:
        for a in run.agents:
            a.stop_emitting()
        for a in run.agents:
            a.join(30)
        run.leases.stop()
        run.leases.coordinator.close()
        run.subscriber.stop()
        run.projector.stop()


def finish_and_check(run: Run) -> None:
    """Stop the agents (each drives its key in hand to a decision) and check every promise."""
    for a in run.agents:
        a.stop_emitting()
    for a in run.agents:
        a.join(120)
        assert not a.alive, f"{a.agent_id} did not get a decision on its last key within 120s"
    run.leases.stop()
    db = run.settings.require_database()
    with psycopg.connect(db, autocommit=True) as conn, conn.cursor() as cur:
        head = int(cur.execute("SELECT position FROM log_head").fetchone()[0])  # type: ignore[index]
    wait_until(lambda: run.subscriber.last >= head or run.subscriber.finished.is_set(), 60,
               f"the subscriber to reach position {head}")
    time.sleep(1.5)  # idle: the subscriber checks the log on its database connection
    ledgers = [a.ledger for a in run.agents]
    with psycopg.connect(db, autocommit=True) as conn, conn.cursor() as cur:
        log_q = checks.log_quantities(cur, run.prefix)
        model_q = checks.table_quantities(cur, "inventory", run.prefix)
        view_q = {name.removeprefix(STREAM_PREFIX): int(st.state) for name, st in run.view.streams().items()}
        results = [
            checks.no_lost_update(ledgers, log_q, model_q),
            checks.idempotency(cur, ledgers, [a.agent_id for a in run.agents]),
            checks.committed_only(cur, run.seen),
            checks.order_without_holes(cur, run.seen),
            checks.exactly_once_effect(log_q, model_q, view_q),
            checks.history_verifies(cur),
        ]
    failed = [c.line() for c in results if not c.ok]
    assert not failed, "\n".join(failed)
    assert run.projector.error is None and not run.projector.finished.is_set(), run.projector.error
    assert run.projector.publisher is not None and run.projector.publisher.error is None
    assert run.subscriber.error is None and not run.subscriber.finished.is_set(), run.subscriber.error
    for a in run.agents:
        assert a.error is None, f"{a.agent_id}: {a.error}"
        assert a.listener_error is None, f"{a.agent_id}'s outcome listener stopped: {a.listener_error}"
    assert run.leases.overlaps == 0, "two agents held the exclusive lease at once"


def wait_for_progress(run: Run, more: int, timeout: float, what: str) -> None:
    target = run.committed() + more
    wait_until(lambda: run.committed() >= target, timeout, what)


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server for this test alone: it is stopped and started during the test."""
    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="es-fault-")) / "pg", ephemeral=True)
    try:
        pg.start()
    except EventStoreError as e:
        pytest.skip(f"embedded PostgreSQL could not start: {e}")
    yield pg
    pg.stop()


def test_database_restart_during_a_run_heals(own_postgres: EmbeddedPostgres, servers: Servers,
                                             harness: Callable[[Settings], Run]) -> None:
    upgrade(own_postgres.url)
    settings = Settings(database_url=SecretStr(own_postgres.url), kafka_bootstrap=servers.kafka_bootstrap,
                        namespace=f"t{uuid.uuid4().hex[:10]}", intake_partitions=4)
    run = harness(settings)
    wait_for_progress(run, 30, 60, "agents to commit before the fault")
    grants_before = run.leases.grants

    waiter = AgentClient("fault-waiter", settings)
    try:
        own_postgres.halt()
        # Emitted while PostgreSQL is down: the handle must resolve after recovery, with no re-emit
        # (the listener LISTENs again and re-reads the outcome tables for what it may have missed).
        handle = waiter.emit(InventoryAdjusted(sku=f"w{run.prefix}", delta=5), stream_for(f"w{run.prefix}"))
        time.sleep(10)  # agents keep emitting into the intake topic; emit_and_wait times out meanwhile
        assert not handle.done()
        committed_while_down = run.committed()
        own_postgres.resume()
        assert handle.result(90).status is Outcome.COMMITTED
    finally:
        waiter.close()

    wait_for_progress(run, 30, 90, "agents to commit again after PostgreSQL came back")
    wait_until(lambda: run.leases.grants > grants_before + 5, 60, "leases granted again after the restart")
    wait_until(run.leases.coordinator.wakeups.listening.is_set, 30, "the lease listener to listen again")
    assert sum(a.ledger.timeouts for a in run.agents) > 0, "the outage did not affect any emit"
    assert run.committed() > committed_while_down
    finish_and_check(run)


def test_every_database_connection_killed_mid_run_heals(settings: Settings,
                                                        harness: Callable[[Settings], Run]) -> None:
    run = harness(settings)
    wait_for_progress(run, 30, 60, "agents to commit before the fault")
    killed = 0
    for _ in range(3):  # three times, so some kills land mid-transaction and mid-LISTEN
        with psycopg.connect(settings.require_database(), autocommit=True) as conn:
            row = conn.execute(TERMINATE_OTHERS).fetchone()
        killed += int(row[0]) if row else 0
        wait_for_progress(run, 10, 60, "agents to commit again after the connections were killed")
    # projector (batch + publisher), subscriber, 4 agents (pool + listener), coordinator (pool + listener)
    assert killed >= 10, f"only {killed} sessions were terminated"
    grants = run.leases.grants
    wait_until(lambda: run.leases.grants > grants + 5, 60, "leases granted after the kills")
    finish_and_check(run)
