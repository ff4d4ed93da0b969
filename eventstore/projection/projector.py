"""The projector: a consumer-group member that turns intake messages into committed events.

Kafka offsets are only a hint here: the truth is the ``consumer_offsets`` table, written in the
batch transaction. On assignment the consumer seeks to the stored offsets, and every batch re-checks
them under a row lock, so a member that lost its partitions in a rebalance (a zombie) cannot apply
anything twice. Kafka offsets are committed after the database commit, for lag tooling only.

Nothing is skipped silently: at assignment and on every batch the stored offsets are checked against
the topic's watermarks (a recreated or truncated topic stops the projector with an error naming the
operator command), and the topics' partition counts are checked at start. Each message passes one
boundary (``read_message``) that turns whatever it makes the code raise into a dead letter.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from eventstore.coordination.alerts import Alerter
from eventstore.core.backoff import backoff_delays
from eventstore.core.errors import OffsetsNotTrustedError, StorageError, TransientStorageError
from eventstore.core.events import import_app_modules, registry
from eventstore.core.lifecycle import BackgroundRunner
from eventstore.core.limits import offset_problem
from eventstore.core.opsevents import ProjectorStalled
from eventstore.core.outcomes import Outcome
from eventstore.core.settings import Settings
from eventstore.core.validation import printable
from eventstore.kafka.config import ensure_topics, pipeline_topics, producer_config, projector_consumer_config
from eventstore.kafka.probe import partitions_reaching
from eventstore.postgres.connection import Database, converted_errors
from eventstore.postgres.intake import PoisonBatchError, write_batch
from eventstore.postgres.intakebatch import BatchResult, IntakeMessage, dead_letter_headers, intake_messages
from eventstore.postgres.offsets import load_offsets
from eventstore.postgres.readmodels import ReadModel, ReadModelError, read_models
from eventstore.projection import metrics as projector_metrics
from eventstore.projection.handoff import LocalCommits
from eventstore.projection.publisher import Publisher
from eventstore.wire.rejections import encode_rejection

log = logging.getLogger(__name__)
# How long a partition may be sent back to the same offset without progress before the hole counts as
# real (the records are gone) and the projector stops rather than skip them. A time, not a count: a
# broker under load may take a while to show the earlier record.
HOLE_PATIENCE_SECONDS = 30.0
# Kafka offsets are only a hint for lag tooling (PostgreSQL holds the real ones), so they are committed at most
# this often (and when idle), not after every batch: at a steady 1,000 events/s the projector commits 150-250
# small batches a second, and each OffsetCommit cost tansu 120-350 µs of CPU (docs/perf-latency.md, Round 4).
KAFKA_COMMIT_SECONDS = 0.5
SETUP_LOCK = "SELECT pg_advisory_xact_lock(hashtext('eventstore read-model setup'))"


@dataclass
class ProjectorStats:
    batches: int = 0
    messages: int = 0
    committed: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: int = 0
    dead_letters: int = 0
    retries: int = 0
    stalled_alerts: int = 0  # retry loops that lasted longer than EVENTSTORE_RETRY_ALERT_SECONDS
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, r: BatchResult, messages: int) -> None:
        with self.lock:
            self.batches += 1
            self.messages += messages
            self.committed += len(r.committed)
            self.duplicates += r.count(Outcome.DUPLICATE)
            self.conflicts += r.count(Outcome.CONFLICT)
            self.rejected += r.count(Outcome.REJECTED)
            self.dead_letters += len(r.dead_letters)


class Projector(BackgroundRunner):
    """Consume the intake topic and commit batches into PostgreSQL. Start several for scale."""

    def __init__(
        self,
        settings: Settings,
        *,
        models: Sequence[ReadModel] | None = None,
        group: str | None = None,
        publish: bool = True,
        hand_off: bool = True,
    ) -> None:
        super().__init__(f"projector-{group or settings.projector_group}")
        import_app_modules(settings.app_modules)
        self.settings = settings
        self.database = Database(settings.require_database(), application_name="eventstore-projector")
        settings.require_kafka()
        self.group = group or settings.projector_group
        self.topic = settings.intake_topic
        self.models = list(models) if models is not None else read_models.create()
        self.stats = ProjectorStats()
        self._assigned: set[int] = set()
        self.ready = threading.Event()
        self.publisher = Publisher(settings) if publish else None
        # hand_off=False makes the publisher read every event back from the log (benchmarks compare both).
        self._local = self.publisher.local if self.publisher is not None and hand_off else LocalCommits(0)
        self.alerter = Alerter(settings.alert_webhook)
        self._fatal: OffsetsNotTrustedError | None = None
        self._retrying_since: float | None = None
        self._retry_attempts = 0
        self._alerted = False
        self._batch_watermarks: dict[int, tuple[int, int]] = {}
        self._rewinds: dict[tuple[int, int], tuple[float, int]] = {}  # hole -> (first seen, rewinds)
        self.hole_patience = HOLE_PATIENCE_SECONDS
        self.kafka_commit_every = KAFKA_COMMIT_SECONDS
        self._kafka_offsets: dict[int, int] = {}  # next offsets not yet committed to Kafka
        self._kafka_committed_at = 0.0

    # -- lifecycle ---------------------------------------------------------------------------
    def setup(self) -> None:
        """Create the topics (with the configured partition counts; a topic with another count is a
        ConfigurationError) and the read models' tables if missing."""
        ensure_topics(self.settings, pipeline_topics(self.settings))
        with self._connect() as conn, conn.transaction(), conn.cursor() as cur:
            # CREATE TABLE IF NOT EXISTS is not safe against itself: two projectors starting together
            # can both try to create a table and one fails on a catalog unique index. Take turns.
            cur.execute(SETUP_LOCK)
            for m in self.models:
                m.setup(cur)

    stop_timeout = 15.0

    def _before_start(self) -> None:
        self.setup()

    def _connect(self) -> psycopg.Connection[Any]:
        return self.database.connect()

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        """Consume until stop() (or SIGTERM via the CLI). A fatal error ends the loop; run in a
        thread (``start()``), it is kept in ``self.error``."""
        conn = self._connect()
        consumer = Consumer(projector_consumer_config(self.settings, self.group))
        producer = Producer(producer_config(self.settings))

        def on_assign(c: Consumer, parts: list[TopicPartition]) -> None:
            # A fresh connection: the batch connection may have died since the last batch.
            stored = self._stored_offsets()
            suspects: dict[int, str] = {}
            for p in parts:
                p.offset = stored.get(p.partition, OFFSET_BEGINNING)
                if p.partition not in stored:
                    continue
                try:
                    low, high = c.get_watermark_offsets(TopicPartition(self.topic, p.partition), timeout=5)
                except KafkaException as e:
                    log.warning("no watermarks for %s[%d] at assignment (checked on every batch): %s",
                                self.topic, p.partition, e)
                    continue
                problem = offset_problem(self.topic, p.partition, stored[p.partition], low, high)
                if problem is not None and stored[p.partition] > high:
                    suspects[p.partition] = problem  # the reported end may be inexact: read to confirm
                elif problem is not None:
                    self._fatal = OffsetsNotTrustedError(problem, partition=p.partition)
            if suspects and not self._fatal:
                fine = partitions_reaching(self.settings, self.topic, {q: stored[q] for q in suspects},
                                           group=self.group)
                wrong = sorted(set(suspects) - fine)
                if wrong:
                    self._fatal = OffsetsNotTrustedError(suspects[wrong[0]], partition=wrong[0], ahead=True)
            if self._fatal is not None:
                log.error("%s", self._fatal)
                return  # assign nothing: the loop stops the projector
            self._assigned = {p.partition for p in parts}
            c.assign(parts)
            self.ready.set()
            log.info("assigned partitions %s", sorted(self._assigned))

        def on_revoke(c: Consumer, parts: list[TopicPartition]) -> None:
            # Sent before giving them up (asynchronous: a hint may land late and be refused, harmlessly; a
            # synchronous commit would hold the rebalance up for as long as the broker does not answer).
            self._commit_kafka(c, force=True)
            self._assigned -= {p.partition for p in parts}
            c.unassign()

        def on_lost(c: Consumer, parts: list[TopicPartition]) -> None:
            # Lost, not revoked: another member may own them already, so their hints are dropped, not sent.
            lost = {p.partition for p in parts}
            self._kafka_offsets = {p: o for p, o in self._kafka_offsets.items() if p not in lost}
            self._assigned -= lost
            c.unassign()

        consumer.subscribe([self.topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
        if self.publisher is not None:
            self.publisher.start()
        try:
            while not self._stop.is_set():
                batch = self._next_batch(consumer)
                if self._fatal is not None:
                    raise self._fatal
                if batch:
                    conn = self._process(conn, consumer, producer, batch, self._watermarks(consumer, batch))
                else:
                    self._commit_kafka(consumer)  # what the last batches stored, once the interval passed
                del batch  # an idle projector holds no message of its last batch while it polls
        finally:
            if self.publisher is not None:
                self.publisher.stop()
            self._commit_kafka(consumer, force=True)
            consumer.close()
            producer.flush(5)
            conn.close()

    def _next_batch(self, consumer: Consumer) -> list[IntakeMessage]:
        first = consumer.poll(0.1)
        if first is None:
            return []
        msgs: list[Message] = [first]
        if self.settings.batch_size > 1:
            msgs.extend(consumer.consume(self.settings.batch_size - 1, timeout=self.settings.batch_wait_ms / 1000))
        out = intake_messages(msgs)
        if len(out) < len(msgs):
            for m in msgs:
                err = m.error()
                if err is not None and err.code() != KafkaError._PARTITION_EOF:
                    log.warning("intake consumer error: %s", err.str())
        return out

    def _stored_offsets(self) -> dict[int, int]:
        """The stored offsets, read on a connection of its own and retried while PostgreSQL is away."""
        delays = backoff_delays(base=0.05, cap=2.0)
        while True:
            try:
                with converted_errors(), self.database.connect() as conn:
                    offsets = load_offsets(conn, self.group, self.topic)
                self._retry_done()
                return offsets
            except TransientStorageError as e:
                self._retry_noted(e, sorted(self._assigned))
                if self._stop.is_set():
                    raise
                log.warning("reading stored offsets at assignment: %s", e)
                time.sleep(next(delays))

    def _watermarks(self, consumer: Consumer, batch: list[IntakeMessage]) -> dict[int, tuple[int, int]]:
        """The partitions' (low, high) offsets: by default what the consumer last learned from its
        fetches (no broker round trip; may lag), widened by the batch's own offsets, which exist."""
        out: dict[int, tuple[int, int]] = {}
        by_partition: dict[int, list[int]] = defaultdict(list)
        for m in batch:  # one pass over the batch, not one per partition
            by_partition[m.partition].append(m.offset)
        for p, offsets in by_partition.items():
            try:
                low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), cached=True)
            except KafkaException:
                continue
            if low < 0 or high < 0:
                continue
            out[p] = (min(int(low), min(offsets)), max(int(high), max(offsets) + 1))
        return out

    def _retry_noted(self, error: Exception, partitions: list[int]) -> None:
        """Count a retry; a retry loop older than EVENTSTORE_RETRY_ALERT_SECONDS raises one alert (log,
        stats.stalled_alerts, the webhook) instead of spinning quietly."""
        now = time.monotonic()
        if self._retrying_since is None:
            self._retrying_since = now
        self._retry_attempts += 1
        waited = now - self._retrying_since
        if waited >= self.settings.retry_alert_seconds and not self._alerted:
            self._alerted = True
            with self.stats.lock:
                self.stats.stalled_alerts += 1
            log.error("projector %s has been retrying for %.0fs (%d attempts): %s", self.group, waited,
                      self._retry_attempts, error)
            self.alerter.send(ProjectorStalled(group=self.group, topic=self.topic, partitions=partitions,
                                               seconds=round(waited, 1), attempts=self._retry_attempts,
                                               last_error=str(error)[:500]))

    def _retry_done(self) -> None:
        self._retrying_since = None
        self._retry_attempts = 0
        self._alerted = False

    def _process(self, conn: psycopg.Connection[Any], consumer: Consumer, producer: Producer,
                 batch: list[IntakeMessage], watermarks: dict[int, tuple[int, int]] | None = None,
                 ) -> psycopg.Connection[Any]:
        started = time.perf_counter()
        self._batch_watermarks = watermarks or {}
        with self._local.batch() as hand:  # the publisher of this process publishes from what committed
            result, conn = self._commit_with_retries(conn, batch, {})
            hand(result.committed)
        self._retry_done()
        self.stats.add(result, len(batch))
        projector_metrics.observe(result, len(batch), time.perf_counter() - started)
        # Topic copies of dead letters and rejections: the tables already hold them, so a broker
        # problem here is logged and must not stop the projector.
        try:
            for d in result.dead_letters:
                producer.produce(self.settings.dead_letter_topic, value=d.message.value, key=d.message.key,
                                 headers=dead_letter_headers(d, self.topic))
            for rejection in result.rejections:
                key, value, headers = encode_rejection(rejection)
                producer.produce(self.settings.rejections_topic, value=value, key=key, headers=headers)
            if result.dead_letters or result.rejections:
                producer.poll(0)
        except (KafkaException, BufferError) as e:
            log.error("could not publish dead letters/rejections to Kafka (they are in PostgreSQL): %s", e)
        self._count_rewinds(result)
        self._kafka_offsets.update(result.next_offsets)
        self._commit_kafka(consumer)
        try:
            for p, o in result.behind.items():
                if p in self._assigned and p not in result.next_offsets and p not in result.rewind:
                    consumer.seek(TopicPartition(self.topic, p, o))
            for p, o in result.rewind.items():
                if p in self._assigned:
                    consumer.seek(TopicPartition(self.topic, p, o))
        except KafkaException as e:  # the stored offsets fence every batch: a missed seek cannot skip or repeat
            log.warning("could not seek the intake consumer: %s", e)
        return conn

    def _commit_kafka(self, consumer: Consumer, force: bool = False) -> None:
        """Commit the stored offsets to Kafka (a hint for lag tooling only) when ``kafka_commit_every`` seconds
        passed since the last commit, or now with ``force`` (revocation, stop)."""
        now = time.monotonic()
        if not self._kafka_offsets or (not force and now - self._kafka_committed_at < self.kafka_commit_every):
            return
        offsets, self._kafka_offsets = self._kafka_offsets, {}
        self._kafka_committed_at = now
        try:
            consumer.commit(offsets=[TopicPartition(self.topic, p, o) for p, o in offsets.items()], asynchronous=True)
        except KafkaException as e:  # Kafka offsets are only a hint; PostgreSQL holds the real ones
            log.warning("could not commit Kafka offsets: %s", e)

    def _count_rewinds(self, result: BatchResult) -> None:
        """A batch cut at a hole (core/offsetorder.py) sends the consumer back to the first missing
        offset. Progress on a partition ends its count; the same hole for ``hole_patience`` seconds
        without progress means the records are gone, and the projector stops with the operator's command."""
        for p in result.next_offsets:
            for key in [k for k in self._rewinds if k[0] == p]:
                del self._rewinds[key]
        most_rewinds = 0
        for p, offset in result.rewind.items():
            key = (p, offset)
            first, n = self._rewinds.get(key, (time.monotonic(), 0))
            self._rewinds[key] = (first, n + 1)
            waited = time.monotonic() - first
            most_rewinds = max(most_rewinds, n + 1)
            log.warning("%s[%d]: the consumer handed over a later record while offset %d was missing; "
                        "rewinding to %d (rewind %d, %.1f s without progress)", self.topic, p, offset, offset,
                        n + 1, waited)
            if waited >= self.hole_patience:
                raise OffsetsNotTrustedError(
                    f"{self.topic}[{p}]: the record at offset {offset} was not delivered for {waited:.0f} s "
                    f"although later ones were ({n + 1} rewinds): it is gone (retention or truncation) or was "
                    "never a record (a transactional producer's marker; the intake topic takes none). Check the "
                    "partition's start offset and what the agents sent, recover what you can, then run "
                    "`eventstore offsets reset --topic intake --reason \"...\"`",
                    partition=p, stored=offset)
        if most_rewinds:
            # Give a broker that showed a later record first the time to show the earlier one.
            time.sleep(min(0.05 * most_rewinds, 0.5))

    def _commit_with_retries(
        self, conn: psycopg.Connection[Any], batch: list[IntakeMessage], poisoned: dict[tuple[int, int], str]
    ) -> tuple[BatchResult, psycopg.Connection[Any]]:
        delays = backoff_delays()
        while True:
            try:
                return self._write(conn, batch, poisoned), conn
            except TransientStorageError as e:
                self.stats.retries += 1
                self._retry_noted(e, sorted({m.partition for m in batch}))
                log.warning("%s", e)
                time.sleep(next(delays))
                if conn.closed or conn.broken:
                    conn = self._reconnect(batch)
            except (ReadModelError, PoisonBatchError) as e:
                if len(batch) == 1:
                    m = batch[0]
                    return self._write(conn, batch, {(m.partition, m.offset): printable(str(e))}), conn
                # Split the batch to isolate the event the handler cannot apply; the rest commit.
                merged = BatchResult()
                for m in batch:
                    r, conn = self._commit_with_retries(conn, [m], poisoned)
                    merged.committed += r.committed
                    merged.results += r.results
                    merged.dead_letters += r.dead_letters
                    merged.next_offsets.update(r.next_offsets)
                    merged.behind.update(r.behind)
                    for p, o in r.rewind.items():
                        merged.rewind.setdefault(p, o)
                    merged.rejections += r.rejections
                return merged, conn

    def _write(self, conn: psycopg.Connection[Any], batch: list[IntakeMessage],
               poisoned: dict[tuple[int, int], str]) -> BatchResult:
        try:
            return write_batch(conn, group=self.group, topic=self.topic, messages=batch,
                               models=self.models, types=registry, poisoned=poisoned,
                               max_event_bytes=self.settings.max_event_bytes, watermarks=self._batch_watermarks,
                               authenticate=self.settings.auth)
        except OffsetsNotTrustedError as e:
            if not e.ahead or e.partition is None or e.stored is None:
                raise
            # The end offset the consumer knows may lag or be inexact: read the topic to confirm.
            if e.partition not in partitions_reaching(self.settings, self.topic, {e.partition: e.stored},
                                                      group=self.group):
                raise
            low, _ = self._batch_watermarks.get(e.partition, (-1, -1))
            self._batch_watermarks[e.partition] = (low, e.stored)
            return self._write(conn, batch, poisoned)

    def _reconnect(self, batch: list[IntakeMessage]) -> psycopg.Connection[Any]:
        delays = backoff_delays()
        while not self._stop.is_set():
            try:
                return self._connect()
            except StorageError as e:
                self._retry_noted(e, sorted({m.partition for m in batch}))
                log.warning("reconnecting to PostgreSQL: %s", e)
                time.sleep(next(delays))
        raise TransientStorageError("projector stopped while reconnecting")
