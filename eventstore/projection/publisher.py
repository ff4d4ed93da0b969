"""Publishes committed events, in position order, to ``<ns>.committed``: from what this process's
projector just committed (the hand-off, eventstore.projection.handoff) and from the PostgreSQL log for
everything else (another process's batches, a restart, a lost connection).

Only committed events exist in the log, so rejected, duplicate and in-flight events can never reach
the topic (promise 3). Positions are gapless and handed out in commit order under the log-head
lock, so tailing ``position > checkpoint`` never skips an event that commits late (promise 4).

One publisher per namespace is active at a time: each candidate holds a PostgreSQL session advisory
lock while it publishes (released by the server if the process dies).

Pages are pipelined: the next page is produced while the broker has not yet acknowledged the previous
ones (the idempotent producer keeps them in order on the one partition), so a batch is produced as soon
as it is handed over. The checkpoint is a cursor, stored (durably) only for positions the broker
acknowledged with everything before them, at most every ``checkpoint_every`` seconds and when the
publisher stops; a crash or a broker error republishes from the stored checkpoint (at most the last
``checkpoint_every`` seconds of events), and subscribers drop the repeats by position.
The topic has one partition, which is what gives subscribers one global order; per-stream order would
survive more partitions, global order would not.

Events from the hand-off are published only as a run that starts at the next unpublished position and
chains hash by hash onto the last event published (``prev_hash``); any other run is dropped and the log
is read instead. So memory can save the read, but never change what is published.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
from confluent_kafka import KafkaError, KafkaException, Producer

from eventstore.core.errors import BrokerError, EventStoreError
from eventstore.core.lifecycle import BackgroundRunner
from eventstore.core.records import RECORDED_FIELDS, RecordedEvent
from eventstore.core.settings import Settings
from eventstore.kafka.config import committed_producer_config, ensure_topics
from eventstore.postgres.connection import Database, convert, is_transient
from eventstore.postgres.eventlog import hash_at
from eventstore.postgres.logreader import read_committed_rows
from eventstore.projection.handoff import LocalCommits
from eventstore.wire.committed import Encoded, encode_recorded, encode_row
from eventstore.wire.notifications import COMMITTED_CHANNEL

log = logging.getLogger(__name__)

LOAD_CHECKPOINT = "SELECT position FROM publisher_checkpoints WHERE name = %s"
SAVE_CHECKPOINT = (
    "INSERT INTO publisher_checkpoints (name, position) VALUES (%s, %s) "
    "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()"
)
TRY_LEAD = "SELECT pg_try_advisory_lock(%s)"
# How long the publisher waits for its own projector's batch in flight before reading the log instead.
HANDOFF_WAIT = 1.0
# How often (seconds) the checkpoint is stored while events flow; a crash republishes at most this much.
CHECKPOINT_EVERY = 0.25
# Which column of a logreader row holds the hash (hex): RECORDED_FIELDS order.
_HASH = RECORDED_FIELDS.index("hash")
T = TypeVar("T")


class Publisher(BackgroundRunner):
    """Produce each committed event once (at least once across crashes), in position order."""

    def __init__(self, settings: Settings, *, page: int = 5000, start_after: int | None = None,
                 hand_off_limit: int = 10_000, pipeline: bool = True,
                 checkpoint_every: float = CHECKPOINT_EVERY) -> None:
        super().__init__("publisher")
        self.settings = settings
        self.database = Database(settings.require_database(), application_name="eventstore-publisher")
        self.topic = settings.committed_topic
        self.page = page
        self.name = self.topic
        self._start_after = start_after
        self.published = 0
        self.position = 0  # the last position produced
        self.acked = 0  # the last position the broker acknowledged, with every position before it
        self.saved = 0  # the position in the stored checkpoint
        # pipeline=False waits for the broker's acknowledgement of every page; with checkpoint_every=0 as well
        # it is the previous publisher (checkpoint stored after every page), the baseline of
        # `eventstore bench publisher-latency`.
        self.pipeline = pipeline
        self.checkpoint_every = checkpoint_every
        self._saved_at = 0.0
        self.producer_overrides: dict[str, Any] = {}  # librdkafka settings over the committed producer's
        self.leading = threading.Event()
        # What this process's projector committed: Projector calls ``local.batch()`` around each batch.
        self.local = LocalCommits(hand_off_limit)
        self.from_memory = 0
        self.from_log = 0
        self.chain_misses = 0
        self.leads = 0  # times this publisher took the lead (again after a lost connection)
        self._last_hash: bytes | None = None  # hash of the event at self.position (None: unknown)
        # Positions the broker refused as too large (its limit is below ours): sent as stubs on retry.
        self._too_large: set[int] = set()
        self._failures: list[str] = []
        self._taken = 0.0
        self.stubs = 0
        # Benchmarks set a list here: one (first, last, taken, produced) row of time.time() marks per page.
        self.trace: list[tuple[int, int, float, float]] | None = None

    def _before_start(self) -> None:
        ensure_topics(self.settings, {self.topic: 1})

    def run(self) -> None:
        # One delivery callback for the producer, called only for failures: no Python call per message.
        producer = Producer(committed_producer_config(self.settings, on_delivery=self._delivered,
                                                      **self.producer_overrides))
        try:
            for conn in self.database.reconnecting(self._stop, "publisher"):
                try:
                    self._lead_and_publish(conn, producer)
                except psycopg.Error as e:
                    if not is_transient(e):
                        raise convert(e) from e
                    log.warning("publisher lost PostgreSQL, retrying: %s", e)
                    self._stop.wait(1.0)
                except (EventStoreError, KafkaException, BufferError) as e:
                    # Retry from the stored checkpoint; subscribers drop anything published twice and
                    # fill what is missing from PostgreSQL meanwhile.
                    log.error("publisher could not publish, retrying from the checkpoint: %s", e)
                    self._failures = []
                    self._stop.wait(1.0)
        finally:
            self.local.enable(False)
        producer.flush(10)

    def _lead_and_publish(self, conn: psycopg.Connection[Any], producer: Producer) -> None:
        key = zlib.crc32(("eventstore-publisher:" + self.name).encode())
        self.local.enable(False)
        while not self._stop.is_set():
            row = conn.execute(TRY_LEAD, (key,)).fetchone()
            if row and row[0]:
                break
            self._stop.wait(1.0)  # another publisher leads; take over if it goes away
        else:
            return
        self.leading.set()
        conn.execute("LISTEN " + COMMITTED_CHANNEL)
        with conn.cursor() as cur:
            cur.execute(LOAD_CHECKPOINT, (self.name,))
            row = cur.fetchone()
            self.position = int(row[0]) if row else (self._start_after or 0)
            self._last_hash = hash_at(cur, self.position)
        self.acked = self.saved = self.position
        self._saved_at = time.monotonic()
        self.local.enable(True)
        self.leads += 1
        while not self._stop.is_set():
            if self._publish_page(conn, producer):
                self._settle(conn, producer)
                continue
            wait = self._settle(conn, producer)
            for _ in conn.notifies(timeout=wait, stop_after=1):
                pass
        self._settle(conn, producer, final=True)

    def _settle(self, conn: psycopg.Connection[Any], producer: Producer, final: bool = False) -> float:
        """Serve delivery reports, note what the broker acknowledged and store the checkpoint when it is due
        (every page without pipelining); how long an idle publisher may wait before calling again."""
        producer.poll(0)
        outstanding = len(producer)
        due = final or time.monotonic() - self._saved_at >= self.checkpoint_every
        if outstanding and (due or not self.pipeline) and self.position > self.acked:
            outstanding = producer.flush(30)  # wait for the acknowledgements: every page, or when due
        if self._failures:
            raise BrokerError(f"committed topic did not take events after position {self.acked}: "
                              f"{self._failures[:1]}")
        if not outstanding:
            self.acked = self.position
        if due and self.acked > self.saved:
            conn.execute(SAVE_CHECKPOINT, (self.name, self.acked))
            self.saved, self._saved_at = self.acked, time.monotonic()
            if self._too_large:  # positions at or below the checkpoint are never published again
                self._too_large = {p for p in self._too_large if p > self.saved}
        if self.acked > self.saved or outstanding:
            return max(0.001, min(0.25, self.checkpoint_every - (time.monotonic() - self._saved_at)))
        return 0.25

    def _publish_page(self, conn: psycopg.Connection[Any], producer: Producer) -> bool:
        """Publish the next page (from the hand-off when it holds the next positions, else from the log);
        False when there was nothing to publish."""
        events, before = self.local.take(self.position, self.page, HANDOFF_WAIT)
        self._taken = time.time()
        if events:
            messages = self._encode_held(events)
            if messages is not None:
                self._send(producer, events, messages, encode_recorded)
                self._advance(conn, events[-1].position, events[-1].hash, len(events))
                self.from_memory += len(events)
                return True
            self.local.clear()
            before = None
        with conn.cursor() as cur:
            rows = read_committed_rows(cur, self.position, before, self.page)
        if not rows:
            return False
        limit = self.settings.max_committed_bytes
        self._send(producer, rows, [encode_row(row, limit) for row in rows], encode_row)
        last_hash = rows[-1][_HASH]
        self._advance(conn, int(rows[-1][0]), None if last_hash is None else bytes.fromhex(last_hash), len(rows))
        self.from_log += len(rows)
        return True

    def _encode_held(self, events: Sequence[RecordedEvent]) -> list[Encoded] | None:
        """The messages of a handed-over run, or None (read the log instead) when the run does not chain
        onto what was published or an event cannot be encoded; nothing is produced before this is known."""
        if not self._chains(events):
            self.chain_misses += 1
            log.warning("events handed over from position %d do not chain onto position %d; reading the log "
                        "instead", events[0].position, self.position)
            return None
        limit = self.settings.max_committed_bytes
        try:
            return [encode_recorded(ev, limit) for ev in events]
        except (ValueError, TypeError) as e:  # not expected: intake refuses what JSON cannot carry
            self.chain_misses += 1
            log.warning("events handed over from position %d could not be encoded (%s); reading the log instead",
                        events[0].position, e)
            return None

    def _chains(self, events: Sequence[RecordedEvent]) -> bool:
        """Whether ``events`` continue the published chain link by link (what the log holds after
        self.position); a run that does not is not trusted."""
        prev = self._last_hash
        if prev is None:
            return False
        for ev in events:
            if ev.prev_hash != prev or ev.hash is None:
                return False
            prev = ev.hash
        return True

    def _advance(self, conn: psycopg.Connection[Any], position: int, last_hash: bytes | None, count: int) -> None:
        if self.trace is not None:
            self.trace.append((position - count + 1, position, self._taken, time.time()))
        self.position = position
        self._last_hash = last_hash
        self.published += count

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failures.append(err.str())
            position = dict(msg.headers() or []).get("es-position")
            if err.code() == KafkaError.MSG_SIZE_TOO_LARGE and position is not None:
                self._too_large.add(int(position))

    def _send(self, producer: Producer, items: Sequence[T], messages: list[Encoded],
              encode: Callable[[T, int], Encoded]) -> None:
        """Produce a page's messages; ``_settle`` learns when the broker acknowledged them."""
        too_large, topic, produce = self._too_large, self.topic, producer.produce
        for item, encoded in zip(items, messages, strict=True):
            if too_large and encoded[0] in too_large:
                encoded = encode(item, 0)
            if encoded[4]:
                self._stub(encoded[0])
            try:  # the common case inline: one call per event, no delivery callback (failures only)
                produce(topic, value=encoded[2], key=encoded[1], headers=encoded[3])
            except (BufferError, KafkaException):
                self._produce(producer, item, encoded, encode)

    def _stub(self, position: int) -> None:
        self.stubs += 1
        log.warning("event at position %d is too large for %s; published as a stub that subscribers complete "
                    "from PostgreSQL", position, self.topic)

    def _produce(self, producer: Producer, item: T, encoded: Encoded, encode: Callable[[T, int], Encoded]) -> None:
        """Produce one committed event that the client did not take at once: wait while its queue is full;
        one the client or the broker refuses as too large goes out as a stub (subscribers read it from
        PostgreSQL), so no single event can hold the publisher up."""
        position, key, value, headers, _ = encoded
        while True:
            try:
                producer.produce(self.topic, value=value, key=key, headers=headers)
                return
            except BufferError:
                producer.poll(0.01)
            except KafkaException as e:
                err = e.args[0] if e.args and isinstance(e.args[0], KafkaError) else None
                if err is None or err.code() != KafkaError.MSG_SIZE_TOO_LARGE or position in self._too_large:
                    raise
                self._too_large.add(position)
                stub = encode(item, 0)
                self._stub(position)
                self._produce(producer, item, stub, encode)
                return
