"""A subscriber: follows the committed topic and applies each committed event in global position
order to handler functions and a local view: exactly once to a view that stores its position with
its state (SQLiteView), at least once to handlers across a crash (the checkpoint is saved after them,
so a handler should be idempotent by position or keep the position with its own effects).

Positions in the log are gapless, so continuity is the whole safety argument: a message at or below
the last applied position is a republish and is dropped; a message beyond ``last + 1`` means Kafka
lost (retention) or never had (late publisher) the events in between, which are read from the
PostgreSQL event log before going on. The same rule makes a fresh subscriber catch up from
PostgreSQL and then go live without a gap or a repeat.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
from confluent_kafka import Consumer, KafkaError, TopicPartition

from consumers.checkpoints import Checkpoint
from consumers.views import LocalView
from eventstore.core.errors import DecodeError, TransientStorageError
from eventstore.core.events import Event
from eventstore.core.lifecycle import BackgroundRunner
from eventstore.core.records import RecordedEvent
from eventstore.core.settings import Settings
from eventstore.discovery import resolve_settings
from eventstore.kafka.config import consumer_config
from eventstore.postgres import eventlog
from eventstore.postgres.connection import Database, convert, is_transient
from eventstore.wire.committed import PayloadOmitted, decode_committed

log = logging.getLogger(__name__)
Handler = Callable[[RecordedEvent], None]
T = TypeVar("T")


class Subscriber(BackgroundRunner):
    """``Subscriber(group="pricing", handlers={InventoryUpdated: fn}, view=LocalView()).start()``."""

    def __init__(
        self,
        group: str,
        handlers: Mapping[str | type[Event], Handler] | None = None,
        view: LocalView | None = None,
        *,
        settings: Settings | None = None,
        checkpoint: Checkpoint | None = None,
        from_beginning: bool = False,
        catch_up_from_db: bool = True,
        idle_check: float = 2.0,
    ) -> None:
        super().__init__(f"subscriber-{group}")
        self.group = group
        self.settings = resolve_settings(settings, need_kafka=True)
        self.database = Database(self.settings.require_database(),
                                 application_name=f"eventstore-subscriber:{group}"[:63])
        self.view = view if view is not None else LocalView()
        self.handlers = {(k if isinstance(k, str) else k.event_type): v for k, v in (handlers or {}).items()}
        self.checkpoint = checkpoint
        self.from_beginning = from_beginning
        self.catch_up_from_db = catch_up_from_db
        self.idle_check = idle_check
        self.last = 0
        self.applied = 0
        self.repeats_dropped = 0
        self.backfilled = 0
        self.live = threading.Event()
        self._db: psycopg.Connection[Any] | None = None

    def _start_position(self) -> int:
        if self.from_beginning:
            return 0
        if self.checkpoint is not None:
            return self.checkpoint.load()
        return self.view.load_position()

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        self.last = self._start_position()
        if self.catch_up_from_db:
            while not self._stop.is_set() and not self._healing(self._catch_up):
                pass
        topic = self.settings.committed_topic
        consumer = Consumer(consumer_config(self.settings, f"{self.settings.namespace}.subscriber.{self.group}"))
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
            # Without republishes offset k holds position k + 1 (republishes only push positions to
            # higher offsets), so starting at offset `last` is a guess that skips nothing in that case;
            # if it overshoots (a topic that started late), the gap rule backfills from PostgreSQL.
            consumer.assign([TopicPartition(topic, 0, max(low, min(self.last, high)))])
            self.live.set()
            idle_since = time.monotonic()
            while not self._stop.is_set():
                first = consumer.poll(0.1)  # wakes on the first message; the rest is what is already here
                msgs = [] if first is None else [first, *consumer.consume(999, timeout=0)]
                values = [m.value() for m in msgs if not _skip(m)]
                # A batch dropped for a lost database connection is safe: the next message is beyond
                # last + 1, so the gap rule reads the dropped events from the log.
                events = self._healing(functools.partial(self._in_order, values))
                if events:
                    self._apply(events)
                    idle_since = time.monotonic()
                elif self.catch_up_from_db and time.monotonic() - idle_since > self.idle_check:
                    self._healing(self._catch_up)  # the publisher may be down: the log is the truth
                    idle_since = time.monotonic()
        finally:
            consumer.close()
            if self._db is not None:
                self._db.close()

    def _in_order(self, values: Sequence[bytes | None]) -> list[RecordedEvent]:
        out: list[RecordedEvent] = []
        last = self.last
        for value in values:
            try:
                ev = decode_committed(value)
            except PayloadOmitted as e:  # too large for the topic: the log holds it (and anything before it)
                if e.position > last:
                    missing = self._read_log(last, e.position)
                    self.backfilled += len(missing)
                    out.extend(missing)
                    last = missing[-1].position if missing else last
                continue
            except DecodeError as e:
                log.error("skipping a message on the committed topic that is not an event: %s", e)
                continue
            if ev.position <= last:
                self.repeats_dropped += 1
                continue
            if ev.position > last + 1:
                missing = self._read_log(last, ev.position - 1)
                self.backfilled += len(missing)
                out.extend(missing)
            out.append(ev)
            last = ev.position
        return self._fill_stream_gaps(out)

    def _fill_stream_gaps(self, events: list[RecordedEvent]) -> list[RecordedEvent]:
        """Per-stream continuity: a version beyond the view's next is filled from the log."""
        seen: dict[str, int] = {}
        out: list[RecordedEvent] = []
        version_of = self.view.version_of
        for ev in events:
            known = seen.get(ev.stream)
            if known is None:
                known = version_of(ev.stream)
            if known and ev.version > known + 1 and self.view.accepts(ev.stream):
                with self._conn().cursor() as cur:
                    missing = [m for m in eventlog.read_stream(cur, ev.stream, known, ev.version - known - 1)
                               if m.version < ev.version]
                log.warning("stream %s jumped from v%d to v%d; backfilled %d events", ev.stream, known,
                            ev.version, len(missing))
                self.backfilled += len(missing)
                out.extend(missing)
            if ev.version > known:
                out.append(ev)
                seen[ev.stream] = ev.version
        return out

    def _apply(self, events: list[RecordedEvent]) -> None:
        for ev in events:
            handler = self.handlers.get(ev.type)
            if handler is not None:
                handler(ev)
        last = max(self.last, events[-1].position)
        self.view.apply_batch(events, last)
        if self.checkpoint is not None:
            self.checkpoint.save(last)
        self.last = last
        self.applied += len(events)

    def _catch_up(self) -> None:
        while not self._stop.is_set():
            page = self._read_log(self.last, None)
            if not page:
                return
            self.backfilled += len(page)
            self._apply(page)

    def _read_log(self, after: int, upto: int | None, page: int = 10_000) -> list[RecordedEvent]:
        limit = page if upto is None else min(page, upto - after)
        with self._conn().cursor() as cur:
            events = eventlog.read_all(cur, after, limit)
        if upto is not None and events and events[-1].position < upto:
            events += self._read_log(events[-1].position, upto, page)
        return events

    def _healing(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn``; on a lost database connection, log, wait a moment and return None (the caller
        tries again later) instead of ending the subscriber. Other database errors still raise."""
        try:
            return fn()
        except psycopg.Error as e:
            if not is_transient(e):
                raise convert(e) from e
            log.warning("subscriber %s lost PostgreSQL, retrying: %s", self.group, e)
        except TransientStorageError as e:
            log.warning("subscriber %s cannot reach PostgreSQL, retrying: %s", self.group, e)
        if self._db is not None:
            self._db.close()
            self._db = None
        self._stop.wait(0.5)
        return None

    def _conn(self) -> psycopg.Connection[Any]:
        if self._db is None or self._db.closed or self._db.broken:
            self._db = self.database.connect(autocommit=True)
        return self._db


def _skip(m: Any) -> bool:
    err = m.error()
    if err is None:
        return False
    if err.code() != KafkaError._PARTITION_EOF:
        log.warning("committed topic consumer error: %s", err.str())
    return True
