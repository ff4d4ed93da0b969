"""``eventstore simulate``: agents, projectors in processes, a subscriber and faults on a schedule
against real servers, then every observable promise checked (see docs/simulate.md)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, TopicPartition

from consumers.subscriber import Subscriber
from consumers.views import LocalView, Reducer
from eventstore.coordination import Coordinator
from eventstore.core.errors import EventStoreError
from eventstore.core.records import RecordedEvent
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedPostgres, EmbeddedServers
from eventstore.examples.inventory import STREAM_PREFIX, quantity_reducer
from eventstore.kafka.config import consumer_config, ensure_topics
from eventstore.postgres.agents import register as register_agent
from eventstore.postgres.connection import Database, connect, converted_errors
from eventstore.postgres.migrate import upgrade
from eventstore.projection.rebuild import rebuild
from eventstore.simulate import checks
from eventstore.simulate.agents import SimAgent
from eventstore.simulate.faults import FAULT_KINDS, FaultInjector, plan
from eventstore.simulate.processes import ProjectorSupervisor, wait_for
from eventstore.simulate.report import Sample, write_report

log = logging.getLogger(__name__)


@dataclass
class SimConfig:
    agents: int = 20
    seconds: float = 60.0
    skus: int = 8
    faults: tuple[str, ...] = FAULT_KINDS
    db_down_seconds: float = 8.0
    report: Path | None = None
    seed: int = 1


@dataclass
class SimResult:
    checks: list[checks.Check]
    samples: list[Sample]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


@contextlib.contextmanager
def deployment(configured: Settings | None) -> Iterator[tuple[Settings, EmbeddedPostgres | None]]:
    """The configured servers (a fresh namespace), else embedded servers started for this run."""
    if configured is not None:
        yield configured.replace(namespace=f"sim-{uuid.uuid4().hex[:8]}"), None
        return
    with EmbeddedServers(None) as s:
        upgrade(s.postgres.url)
        yield Settings.from_env().with_servers(s.postgres.url, s.broker.bootstrap).replace(
            namespace=f"sim-{uuid.uuid4().hex[:8]}"), s.postgres


class Sampler:
    """Every half second: log head (throughput), intake lag (messages not yet applied), outcomes."""

    def __init__(self, settings: Settings, agents: list[SimAgent], t0: float) -> None:
        self.settings = settings
        self.agents = agents
        self.t0 = t0
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._db = Database(settings.require_database(), application_name="eventstore-simulate-sampler")
        self.error: BaseException | None = None  # a sampler that died leaves a partial report: reported
        self._thread = threading.Thread(target=self._guarded, name="sim-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _guarded(self) -> None:
        try:
            self._run()
        except BaseException as e:
            self.error = e
            log.exception("the simulation's sampler stopped")

    def _run(self) -> None:
        consumer = Consumer(consumer_config(self.settings, f"{self.settings.namespace}.sampler"))
        parts = [TopicPartition(self.settings.intake_topic, p) for p in range(self.settings.intake_partitions)]
        head, stored = -1, -1
        try:
            while not self._stop.wait(0.5):
                end = -1
                with contextlib.suppress(KafkaException):
                    end = sum(max(0, consumer.get_watermark_offsets(p, timeout=1)[1]) for p in parts)
                try:
                    with converted_errors(), self._db.connect(autocommit=True) as conn:
                        row = conn.execute("SELECT position FROM log_head").fetchone()
                        head = int(row[0]) if row else head
                        row = conn.execute("SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets "
                                           "WHERE topic = %s", (self.settings.intake_topic,)).fetchone()
                        stored = int(row[0]) if row else stored
                    db_up = True
                except EventStoreError:
                    db_up = False
                statuses: dict[str, int] = {}
                for a in self.agents:
                    with a.ledger.lock:
                        for k, v in a.ledger.statuses.items():
                            statuses[k] = statuses.get(k, 0) + v
                        statuses["timeout/retry"] = statuses.get("timeout/retry", 0) + a.ledger.timeouts
                lag = end - stored if end >= 0 and stored >= 0 and db_up else None
                self.samples.append(Sample(time.monotonic() - self.t0, head, lag, statuses, db_up))
        finally:
            consumer.close()


class RecordingView(LocalView):
    """A local view that also remembers every event it was given, in order (for the order checks)."""

    def __init__(self, seen: list[checks.SeenEvent], reducer: Reducer, streams: Callable[[str], bool]) -> None:
        super().__init__(reducer, streams)
        self.seen = seen

    def apply_batch(self, events: Sequence[RecordedEvent], position: int) -> None:
        self.seen.extend(checks.SeenEvent(e.position, str(e.event_id), e.stream, e.version) for e in events)
        super().apply_batch(events, position)


def run(config: SimConfig, configured: Settings | None = None, out: object = print) -> SimResult:
    """Run one simulation; ``out`` receives progress lines."""
    say = out if callable(out) else print
    with deployment(configured) as (settings, postgres):
        faults = tuple(k for k in config.faults if k != "db-restart" or postgres is not None)
        if len(faults) != len(config.faults):
            say("db-restart left out: the database is not one this command started")
        settings = settings.replace(intake_partitions=4)
        ensure_topics(settings, {settings.intake_topic: settings.intake_partitions,
                                 settings.dead_letter_topic: 1, settings.rejections_topic: 1,
                                 settings.committed_topic: 1})
        return _simulate(config, settings, postgres, faults, say)


def _simulate(config: SimConfig, settings: Settings, postgres: EmbeddedPostgres | None,
              faults: tuple[str, ...], say: object) -> SimResult:
    emit = say if callable(say) else print
    prefix = f"s{uuid.uuid4().hex[:6]}-"
    skus = [f"{prefix}{i}" for i in range(config.skus)]
    agent_ids = [f"sim-agent-{i:02d}" for i in range(config.agents)]
    supervisor = ProjectorSupervisor(settings)
    coordinator = Coordinator(settings)
    seen: list[checks.SeenEvent] = []

    view = RecordingView(seen, quantity_reducer, lambda s: s.startswith(STREAM_PREFIX + prefix))
    subscriber = Subscriber(f"sim-{prefix}", view=view, settings=settings).start()
    agents: list[SimAgent] = []
    try:
        if not wait_for(lambda: any("assigned partitions" in ln for ln in supervisor.primary.lines), 60):
            raise EventStoreError("the simulation's projector did not get its partitions within 60s")
        # Registered like any deployment's agents: each signs its envelopes with its own credential.
        with connect(settings.require_database(), autocommit=True) as conn, conn.cursor() as cur:
            credentials = {a: str(register_agent(cur, a)) for a in agent_ids}
        agents = [SimAgent(a, settings, skus, seed=config.seed * 1000 + i, credential=credentials[a]).start()
                  for i, a in enumerate(agent_ids)]
        t0 = time.monotonic()
        sampler = Sampler(settings, agents, t0).start()
        injector = FaultInjector(settings, supervisor, coordinator, agent_ids, postgres, t0,
                                 db_down_seconds=config.db_down_seconds)
        schedule = plan(config.seconds, faults)
        emit(f"simulating {config.agents} agents on {config.skus} SKUs for {config.seconds:.0f}s; faults: "
             + ", ".join(f"{k}@{t:.0f}s" for t, k in schedule))
        for at, kind in schedule:
            while time.monotonic() - t0 < at:
                supervisor.check()
                time.sleep(0.1)
            injector.fire(kind)
            fired = injector.records[-1]
            emit(f"fault {fired.kind} at {fired.at:.1f}s: {fired.detail}")
        while time.monotonic() - t0 < config.seconds:
            supervisor.check()
            time.sleep(0.1)
        for a in agents:
            a.stop_emitting()
        injector.join()
        for a in agents:
            while a.alive:
                supervisor.check()
                a.join(0.5)
        emit(f"agents stopped at {time.monotonic() - t0:.0f}s; projector starts {supervisor.starts} "
             f"({supervisor.refused_starts} refused while a server was unreachable, restarted); "
             "waiting for the subscriber to catch up")
        with Database(settings.require_database()).connect(autocommit=True) as conn:
            row = conn.execute("SELECT position FROM log_head").fetchone()
        head = int(row[0]) if row else 0
        wait_for(lambda: subscriber.last >= head or subscriber.finished.is_set(), 60)
        sampler.stop()
        result = _check(settings, prefix, agents, agent_ids, view, seen, supervisor, subscriber, injector,
                        sampler.error)
        result.samples.extend(sampler.samples)
        if config.report is not None:
            write_report(config.report, config_line(config, faults), result.checks, sampler.samples,
                         injector.records)
        return result
    finally:
        for a in agents:
            a.stop_emitting()
        for a in agents:
            a.join(5)
        subscriber.stop()
        supervisor.stop()
        coordinator.close()


def config_line(config: SimConfig, faults: tuple[str, ...]) -> str:
    return (f"{config.agents} agents, {config.skus} SKUs, {config.seconds:.0f}s, faults: {', '.join(faults)}; "
            f"database down {config.db_down_seconds:.0f}s per restart")


def _check(settings: Settings, prefix: str, agents: list[SimAgent], agent_ids: list[str], view: LocalView,
           seen: list[checks.SeenEvent], supervisor: ProjectorSupervisor, subscriber: Subscriber,
           injector: FaultInjector, sampler_error: BaseException | None) -> SimResult:
    ledgers = [a.ledger for a in agents]
    rebuild_error: str | None = None
    db = Database(settings.require_database(), application_name="eventstore-simulate-checks")
    with db.connect(autocommit=True) as conn, conn.cursor() as cur:
        log_q = checks.log_quantities(cur, prefix)
        model_q = checks.table_quantities(cur, "inventory", prefix)
    view_q = _view_quantities(view, log_q)
    try:
        rebuild(settings, "inventory")
    except EventStoreError as e:
        rebuild_error = f"rebuild failed: {e}"
    with db.connect(autocommit=True) as conn, conn.cursor() as cur:
        rebuilt_q = checks.table_quantities(cur, "inventory", prefix)
        result = [
            checks.no_lost_update(ledgers, log_q, model_q),
            checks.idempotency(cur, ledgers, agent_ids),
            checks.committed_only(cur, seen),
            checks.order_without_holes(cur, seen),
            checks.exactly_once_effect(log_q, model_q, view_q),
            checks.rebuild_equals_live(model_q, rebuilt_q, rebuild_error),
            checks.history_verifies(cur),
            checks.hostile_accounted(cur, settings.intake_topic, injector.hostile),
            checks.kill_switch(cur, injector.kill_windows, ledgers),
        ]
    supervisor.check()
    for u in supervisor.unexpected:
        log.error("%s exited on its own with code %d; its last lines:\n%s", u.name, u.code, u.tail)
    exits = [f"{u.name} exited on its own with code {u.code}: {u.tail.splitlines()[-1] if u.tail else ''}"
             for u in supervisor.unexpected]
    agent_errors = [f"{a.agent_id} died: {a.error}" for a in agents if a.error is not None]
    other = [f"subscriber stopped: {subscriber.error}"] if subscriber.error is not None else []
    other += [f"fault {r.kind} {r.detail}" for r in injector.records if r.detail.startswith("NOT INJECTED")]
    if sampler_error is not None:
        other.append(f"the simulation's sampler stopped (the report is partial): {sampler_error}")
    result.append(checks.components(exits, agent_errors, other))
    return SimResult(result, [])


def _view_quantities(view: LocalView, _log_q: dict[str, int]) -> dict[str, int]:
    return {name.removeprefix(STREAM_PREFIX): int(st.state) for name, st in view.streams().items()}
