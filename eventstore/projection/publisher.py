"""Publishes committed events, in position order, from the PostgreSQL log to ``<ns>.committed``.

Only committed events exist in the log, so rejected, duplicate and in-flight events can never reach
the topic (promise 3). Positions are gapless and handed out in commit order under the log-head
lock, so tailing ``position > checkpoint`` never skips an event that commits late (promise 4).

One publisher per namespace is active at a time: each candidate holds a PostgreSQL session advisory
lock while it publishes (released by the server if the process dies). The checkpoint is stored
after the broker acknowledged a page; a crash in between republishes that page, and subscribers drop
the repeats by position. The topic has one partition, which is what gives subscribers one global
order; per-stream order would survive more partitions, global order would not.
"""

from __future__ import annotations

import logging
import threading
import zlib
from typing import Any

import psycopg
from confluent_kafka import KafkaError, KafkaException, Producer

from eventstore.core.errors import BrokerError, EventStoreError
from eventstore.core.lifecycle import BackgroundRunner
from eventstore.core.settings import Settings
from eventstore.kafka.config import ensure_topics, producer_config
from eventstore.postgres import eventlog
from eventstore.postgres.connection import Database, convert, is_transient
from eventstore.wire.committed import encode_committed
from eventstore.wire.notifications import COMMITTED_CHANNEL

log = logging.getLogger(__name__)

LOAD_CHECKPOINT = "SELECT position FROM publisher_checkpoints WHERE name = %s"
SAVE_CHECKPOINT = (
    "INSERT INTO publisher_checkpoints (name, position) VALUES (%s, %s) "
    "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()"
)
TRY_LEAD = "SELECT pg_try_advisory_lock(%s)"


class Publisher(BackgroundRunner):
    """Tail the event log and produce each committed event once (at least once across crashes)."""

    def __init__(self, settings: Settings, *, page: int = 5000, start_after: int | None = None) -> None:
        super().__init__("publisher")
        self.settings = settings
        self.database = Database(settings.require_database(), application_name="eventstore-publisher")
        self.topic = settings.committed_topic
        self.page = page
        self.name = self.topic
        self._start_after = start_after
        self.published = 0
        self.position = 0
        self.leading = threading.Event()
        # Positions the broker refused as too large (its limit is below ours): sent as stubs on retry.
        self._too_large: set[int] = set()
        self.stubs = 0

    def _before_start(self) -> None:
        ensure_topics(self.settings, {self.topic: 1})

    def run(self) -> None:
        producer = Producer(producer_config(self.settings))
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
                self._stop.wait(1.0)
        producer.flush(10)

    def _lead_and_publish(self, conn: psycopg.Connection[Any], producer: Producer) -> None:
        key = zlib.crc32(("eventstore-publisher:" + self.name).encode())
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
        while not self._stop.is_set():
            if not self._publish_page(conn, producer):
                for _ in conn.notifies(timeout=0.25, stop_after=1):
                    pass

    def _publish_page(self, conn: psycopg.Connection[Any], producer: Producer) -> bool:
        with conn.cursor() as cur:
            events = eventlog.read_all(cur, self.position, self.page)
        if not events:
            return False
        failures: list[str] = []

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(err.str())
                position = dict(msg.headers() or []).get("es-position")
                if err.code() == KafkaError.MSG_SIZE_TOO_LARGE and position is not None:
                    self._too_large.add(int(position))

        for ev in events:
            limit = 0 if ev.position in self._too_large else self.settings.max_committed_bytes
            key, value, headers = encode_committed(ev, limit)
            if b'"payload_omitted":true,"size":' in value[-40:]:
                self.stubs += 1
                log.warning("event at position %d is too large for %s; published as a stub that subscribers "
                            "complete from PostgreSQL", ev.position, self.topic)
            while True:
                try:
                    producer.produce(self.topic, value=value, key=key, headers=headers, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.01)
        if producer.flush(30) or failures:
            raise BrokerError(f"committed topic did not take events after position {self.position}: {failures[:1]}")
        self.position = events[-1].position
        self.published += len(events)
        conn.execute(SAVE_CHECKPOINT, (self.name, self.position))
        return True
