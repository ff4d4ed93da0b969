"""A subscriber: follows the committed topic and applies each committed event in global position
order to handler functions and a local view: exactly once to a view that stores its position with
its state (SQLiteView), at least once to handlers across a crash (the checkpoint is saved after them,
so a handler should be idempotent by position or keep the position with its own effects).

Positions in the log are gapless, so continuity is the whole safety argument: a message at or below
the last applied position is a republish and is dropped; a message beyond ``last + 1`` means Kafka
lost (retention) or never had (late publisher) the events in between, which are read from the
PostgreSQL event log (in bounded pages) before going on. The same rule makes a fresh subscriber
catch up from PostgreSQL and then go live without a gap or a repeat.

The topic is not trusted (anyone who can produce to it could forge a message): a message is applied
only if its ``prev_hash`` is the hash of the last applied event and its fields recompute to its
``hash``, and each run of such messages is confirmed by one lookup of the log's hash at the run's last
position (the chain vouches for the rest). Anything else is logged as a forgery and the log's own
events are applied instead; a position beyond the log's head is never applied or checkpointed.

With ``wake_on_commit`` the subscriber also LISTENs for the projector's commit notice (``es_committed``,
sent inside each batch transaction that committed events) and reads the newly committed events straight
from the log, so its view does not wait for the publisher and the broker. The notice is only a wake-up
(anyone may NOTIFY): what is applied is the log's, by the same rule as any read of the log
(core/commitwake.py says when a notice is worth a read). Kafka's copies of those events then arrive as
repeats and are dropped by their position header before they are decoded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from consumers.checkpoints import Checkpoint
from consumers.views import LocalView
from eventstore.core.commitwake import WakeGate, claims
from eventstore.core.errors import BrokerError, DecodeError, IntegrityError, TransientStorageError
from eventstore.core.events import Event
from eventstore.core.hashing import GENESIS
from eventstore.core.lifecycle import BackgroundRunner
from eventstore.core.records import RecordedEvent
from eventstore.core.settings import Settings
from eventstore.discovery import resolve_settings
from eventstore.kafka.config import subscriber_consumer_config
from eventstore.postgres import eventlog
from eventstore.postgres.connection import Database, convert, is_transient
from eventstore.wire.committed import PayloadOmitted, decode_batch, reference_linked
from eventstore.wire.notifications import COMMITTED_CHANNEL

log = logging.getLogger(__name__)
Handler = Callable[[RecordedEvent], None]
# How long a woken subscriber waits for a commit notice before it looks at what Kafka fetched meanwhile
# (seconds): the bound on its Kafka path's extra latency and on stop(), and what its idle loop costs.
WAKE_WAIT = 0.01


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
        page: int = 10_000,
        kafka_config: Mapping[str, Any] | None = None,
        wake_on_commit: bool | None = None,
        wake_wait: float = WAKE_WAIT,
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
        self.forgeries = 0  # committed-topic messages refused (not chaining, not in the log)
        self.page = page
        # librdkafka settings for this subscriber's consumer only, over the deployment's: for example a
        # smaller fetch.wait.max.ms on a broker that answers a waiting fetch only when it expires (tansu)
        # trades idle fetch requests for latency (docs/perf-subscribers.md).
        self.kafka_config = dict(kafka_config or {})
        self.last_hash = GENESIS
        self.live = threading.Event()
        self._db: psycopg.Connection[Any] | None = None
        # The commit wake-up (opt-in: one log read per woken batch per subscriber; None: the setting
        # EVENTSTORE_SUBSCRIBER_WAKE_ON_COMMIT). Its LISTEN connection is its own, so the loop can wait on it.
        self.wake_on_commit = self.settings.subscriber_wake_on_commit if wake_on_commit is None else wake_on_commit
        self.wake_wait = wake_wait
        self.woken = 0  # events applied from the log on a commit notice (also counted in backfilled)
        self.wake_reads = 0  # log reads made on commit notices
        self.queries = 0  # queries this subscriber sent to PostgreSQL (its cost to the database)
        self.gate = WakeGate(window=page)
        self._notices: Generator[list[psycopg.Notify], float | None, None] | None = None
        self._missed = False  # listening again after a lost connection: a notice may have been missed
        self._listens = 0

    def _start(self) -> tuple[int, bytes]:
        """Where to resume and the hash of the event there, checked against the log."""
        if self.from_beginning:
            return 0, GENESIS
        if self.checkpoint is not None:
            position, saved = self.checkpoint.load(), None  # a checkpoint keeps no hash: the log has it
        else:
            position, saved = self.view.load_head()
        with self._conn().cursor() as cur:
            logged = eventlog.hash_at(cur, position)
        if logged is None:
            raise IntegrityError(
                f"subscriber {self.group!r} was saved at position {position}, beyond the event log's head: "
                "the log lost its newest events or the position came from a forged message; run "
                "`eventstore verify` and rebuild this subscriber's view from the beginning")
        if saved is not None and saved != logged:
            raise IntegrityError(
                f"subscriber {self.group!r} was saved at position {position} with hash {saved.hex()[:16]}..., but "
                f"the log has {logged.hex()[:16]}... there: the view was built from a history the log no longer "
                "holds; run `eventstore verify` and rebuild the view from the beginning")
        return position, logged

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self.last, self.last_hash = self._start()
            if self.wake_on_commit:
                listener = Database(self.settings.require_database(),
                                    application_name=f"eventstore-wake:{self.group}"[:63])
                self._notices = listener.listen([COMMITTED_CHANNEL], self._stop, f"subscriber {self.group!r} "
                                                "commit wake-up", on_listening=self._listening,
                                                timeout=self.wake_wait, idle_socket=True)
                next(self._notices, None)  # LISTEN before the catch-up: a commit after it wakes the loop
            if self.catch_up_from_db:
                self._retrying(lambda: self._fill_from_log(None))
            self._follow()
        finally:
            if self._notices is not None:
                self._notices.close()  # closes the LISTEN connection
            if self._db is not None:
                self._db.close()

    def _follow(self) -> None:
        topic = self.settings.committed_topic
        consumer = Consumer(subscriber_consumer_config(
            self.settings, f"{self.settings.namespace}.subscriber.{self.group}", **self.kafka_config))
        try:
            marks = self._watermarks(consumer, topic)
            if marks is None:
                return  # stopped while waiting for the topic
            low, high = marks
            # Without republishes offset k holds position k + 1 (republishes only push positions to
            # higher offsets), so starting at offset `last` is a guess that skips nothing in that case;
            # if it overshoots (a topic that started late), the gap rule backfills from PostgreSQL.
            consumer.assign([TopicPartition(topic, 0, max(low, min(self.last, high)))])
            self.live.set()
            idle_since = time.monotonic()
            busy = False
            while not self._stop.is_set():
                if self._notices is not None:
                    # Woken: wait on the commit notices (not on Kafka, which answers late), read the log
                    # if they claim something new, then take what Kafka fetched meanwhile without waiting
                    # (at once again while Kafka has more: a rebuild from Kafka is not slowed).
                    if self._wake(0.0 if busy else self.wake_wait):
                        idle_since = time.monotonic()
                    msgs = consumer.consume(999, timeout=0)
                    busy = bool(msgs)
                    if msgs:
                        self._fetched(msgs)
                        msgs = self._unseen(msgs)
                    first = None
                else:
                    first = consumer.poll(0.1)  # wakes on the first message; the rest is what is already here
                    msgs = [] if first is None else [first, *consumer.consume(999, timeout=0)]
                    if msgs:
                        self._fetched(msgs)
                values = [m.value() for m in msgs if m.error() is None or not _skip(m)]
                # The Message objects are tracked by the cyclic collector: drop them before the batch's
                # events are built, so that collections during the batch have fewer survivors to walk.
                del msgs, first
                if values:
                    self._retrying(lambda: self._take(values))  # noqa: B023 (called at once)
                    idle_since = time.monotonic()
                elif self.catch_up_from_db and time.monotonic() - idle_since > self.idle_check:
                    self._retrying(lambda: self._fill_from_log(None))  # the publisher may be down: the log is the truth
                    idle_since = time.monotonic()
        finally:
            consumer.close()

    def _watermarks(self, consumer: Any, topic: str) -> tuple[int, int] | None:
        """The committed topic's low and high offsets, waiting while the topic does not exist yet (a
        subscriber started before the projector's publisher, or after a broker that forgot its topics) or
        the broker cannot be reached: meanwhile the log is the truth, so a subscriber that catches up from
        PostgreSQL keeps applying committed events from it. None when stopped while waiting."""
        warned = False
        while not self._stop.is_set():
            try:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
                return int(low), int(high)
            except KafkaException as e:
                err = e.args[0] if e.args and isinstance(e.args[0], KafkaError) else None
                if err is None or not (err.code() in _TOPIC_NOT_YET or err.retriable()):
                    raise BrokerError(f"subscriber {self.group!r} cannot read the committed topic {topic!r}: "
                                      f"{e}; check EVENTSTORE_KAFKA_CONFIG and the broker's ACLs") from e
                if not warned:
                    log.warning("subscriber %r: the committed topic %r is not there yet (%s); following the "
                                "event log until the projector's publisher creates it", self.group, topic,
                                err.str())
                    warned = True
            if self.catch_up_from_db:
                self._retrying(lambda: self._fill_from_log(None))
            self._pause(self.idle_check / 2)
        return None

    # -- the commit wake-up ---------------------------------------------------------------------
    def _listening(self, _conn: psycopg.Connection[Any]) -> None:
        """Called each time the LISTEN is established: after a lost connection a notice may have been
        missed, so the log is read once (the first time, the catch-up or the next notice covers it)."""
        self._missed = self._listens > 0
        self._listens += 1

    def _wake(self, wait: float) -> bool:
        """Wait up to ``wait`` seconds for commit notices, then read the log once if they (all pending
        notices together, and claims kept through a pause) claim a position beyond the last applied one
        (core/commitwake.py), or if a notice may have been missed. Only the log's committed events are
        applied; whether anything was."""
        if self._notices is None:
            return False
        try:
            notes = self._notices.send(wait)
        except StopIteration:  # stopped
            return False
        if notes:
            self._noticed(notes)
        target = self.gate.target(claims(n.payload for n in notes), self.last, time.monotonic())
        before = self.last
        if self._missed:
            self._missed = False
            self.wake_reads += 1
            self._retrying(lambda: self._fill_from_log(None))
        elif target is not None:
            self.wake_reads += 1
            self._retrying(lambda: self._fill_from_log(target))
            self.gate.read_done(target, self.last, time.monotonic())
        if self.last > before:
            self.woken += self.last - before
            return True
        return False

    def _noticed(self, notes: list[psycopg.Notify]) -> None:
        """Called with each batch of commit notices, before the log is read: nothing to do here (the
        visibility benchmark notes when they arrived, to split the latency)."""

    def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` (returns early when stopped), answering commit notices meanwhile if woken."""
        if self._notices is None:
            self._stop.wait(seconds)
            return
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and (left := deadline - time.monotonic()) > 0:
            self._wake(min(left, self.wake_wait))  # poll(2) does not see stop(): wait in short steps

    def _unseen(self, msgs: list[Any]) -> list[Any]:
        """The fetched messages whose position header is beyond the last applied position (and any without
        a readable header: decoding decides for those). A woken subscriber usually holds Kafka's copies
        already; dropping them here, before they are decoded, is safe whatever the header says: a dropped
        message is never applied, and a gap it leaves is read from the log."""
        last, out = self.last, []
        for m in msgs:
            if m.error() is None:
                position = _header_position(m.headers())
                if position is not None and position <= last:
                    self.repeats_dropped += 1
                    continue
            out.append(m)
        return out

    def _fetched(self, messages: list[Any]) -> None:
        """Called with each batch fetched from the committed topic, before it is applied: nothing to do
        here (the subscriber benchmark notes when each message arrived, to split the latency)."""

    def _retrying(self, work: Callable[[], None]) -> None:
        """Run ``work`` until it gets through a PostgreSQL outage (a lost connection, a restart): nothing
        is applied from the topic without the log's word, and retrying is safe (repeats are dropped)."""
        while not self._stop.is_set():
            try:
                work()
                return
            except (psycopg.Error, TransientStorageError) as e:
                if isinstance(e, psycopg.Error) and not is_transient(e):
                    raise convert(e) from e
                log.warning("subscriber %s lost PostgreSQL, retrying in 1 s: %s", self.group, e)
                if self._db is not None:
                    self._db.close()
                self._stop.wait(1.0)

    def _take(self, values: Sequence[bytes | None]) -> None:
        """Apply the messages that chain onto the last applied event; fill gaps and replace anything
        that does not chain (or claims a position the log does not have) from the PostgreSQL log."""
        run: list[RecordedEvent] = []
        append = run.append
        last, prev = self.last, self.last_hash
        events, links = decode_batch(values)
        for value, ev, link in zip(values, events, links, strict=True):
            if ev is None:  # not the fast path's: the reference decoder, which raises its errors
                try:
                    ev, link = reference_linked(value)
                except PayloadOmitted as e:  # too large for the topic: the log holds it (and anything before it)
                    if e.position > last:
                        self._confirm_and_apply(run)
                        run = []
                        append = run.append
                        self._fill_from_log(e.position)
                        last, prev = self.last, self.last_hash
                    continue
                except DecodeError as e:
                    log.error("skipping a message on the committed topic that is not an event: %s", e)
                    continue
            position = ev.position  # link: the hash its fields give over its own prev_hash
            if position == last + 1 and link is not None and link == ev.hash and ev.prev_hash == prev:
                append(ev)  # the common case: the next event, chaining onto the last
                last, prev = position, link
                continue
            if position <= last:
                self.repeats_dropped += 1
                continue
            if position > last + 1 or ev.prev_hash != prev:
                # Kafka lacks events (retention, a late publisher), or the message does not chain onto the
                # run: confirm the run (the log replaces it if it is not the log's) and fill from the log.
                self._confirm_and_apply(run)
                run = []
                append = run.append
                if position > last + 1:
                    self._fill_from_log(position - 1)
                last, prev = self.last, self.last_hash
                if position > last + 1:
                    self.forgeries += 1
                    log.error("committed-topic message claims position %d but the event log ends at %d: "
                              "forged or from another log; dropped, never applied or checkpointed",
                              position, last)
                    continue
                if position <= last:  # the log's events replaced a forged run up to here
                    self.repeats_dropped += 1
                    continue
            if ev.prev_hash == prev and link is not None and link == ev.hash:
                append(ev)
                last, prev = position, link
                continue
            self.forgeries += 1
            log.error("committed-topic message at position %d does not chain onto the event at %d (or its "
                      "fields do not hash to its hash): forged or corrupt; reading the event log instead",
                      position, last)
            self._confirm_and_apply(run)
            run = []
            append = run.append
            self._fill_from_log(position)
            last, prev = self.last, self.last_hash
        self._confirm_and_apply(run)

    def _confirm_and_apply(self, run: list[RecordedEvent]) -> None:
        """A run of messages that chain onto each other is the log's if its last hash is the log's hash
        at that position (one lookup; the chain vouches for the rest). Otherwise the log replaces it."""
        if not run:
            return
        with self._conn().cursor() as cur:
            logged = eventlog.hash_at(cur, run[-1].position)
        if logged == run[-1].hash:
            # The view may already hold some of these events (its versions ahead of a checkpoint saved
            # after it): they are dropped, and the subscriber still moves to the run's end.
            self._apply(self._fill_stream_gaps(run), run[-1])
            return
        self.forgeries += 1
        log.error("committed-topic messages %d..%d chain onto the last applied event but the event log holds "
                  "%s at %d: forged; reading the event log instead", run[0].position, run[-1].position,
                  "nothing" if logged is None else "another event", run[-1].position)
        self._fill_from_log(run[-1].position)

    def _fill_stream_gaps(self, events: list[RecordedEvent]) -> list[RecordedEvent]:
        """Per-stream continuity: a version beyond the view's next is filled from the log."""
        seen: dict[str, int] = {}
        out: list[RecordedEvent] = []
        version_of = self.view.version_of
        for ev in events:
            stream, version = ev.stream, ev.version
            known = seen.get(stream)
            if known is None:
                known = version_of(stream)
            if version == known + 1:  # the common case: the stream's next event
                out.append(ev)
                seen[stream] = version
                continue
            if known and version > known + 1 and self.view.accepts(stream):
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

    def _apply(self, events: list[RecordedEvent], newest: RecordedEvent | None = None) -> None:
        """Apply ``events`` and move to ``newest`` (default: the last of them, the newest: a log page is in
        position order, and _fill_stream_gaps puts a stream's backfilled events, at positions below the event
        that jumped, before that event). ``newest`` may be an event the view already held and dropped."""
        if newest is None:
            if not events:
                return
            newest = events[-1]
        handlers = self.handlers
        if handlers:
            for ev in events:
                handler = handlers.get(ev.type)
                if handler is not None:
                    handler(ev)  # an error stops the subscriber (kept in .error) before anything is saved
        self.view.apply_batch(events, newest.position)
        if self.checkpoint is not None:
            self.checkpoint.save(newest.position)
        self.last = newest.position
        self.last_hash = newest.hash or self.last_hash
        self.applied += len(events)

    def _fill_from_log(self, upto: int | None) -> None:
        """Apply the log's events after ``last`` up to ``upto`` (None: the head), page by page, so a
        gap of any size costs bounded memory. The log's events must chain onto the last applied one."""
        while not self._stop.is_set() and (upto is None or self.last < upto):
            limit = self.page if upto is None else min(self.page, upto - self.last)
            with self._conn().cursor() as cur:
                page = eventlog.read_all(cur, self.last, limit)
            if not page:
                return
            if page[0].prev_hash != self.last_hash:
                raise IntegrityError(
                    f"the event log's event at position {page[0].position} does not chain onto the hash this "
                    f"subscriber applied at {self.last}: the log was rewritten; run `eventstore verify`")
            self.backfilled += len(page)
            self._apply(page)

    def _conn(self) -> psycopg.Connection[Any]:
        self.queries += 1  # each caller sends one query on it
        if self._db is None or self._db.closed or self._db.broken:
            self._db = self.database.connect(autocommit=True)
        return self._db


# The committed topic is not there (yet): wait for it rather than stop.
_TOPIC_NOT_YET = frozenset({KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC,
                            KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.LEADER_NOT_AVAILABLE,
                            KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT})


def _header_position(headers: list[tuple[str, bytes]] | None) -> int | None:
    """The ``es-position`` header of a committed-topic message as an int; None if missing or unreadable."""
    for key, value in headers or ():
        if key == "es-position":
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


def _skip(m: Any) -> bool:
    err = m.error()
    if err is None:
        return False
    if err.code() != KafkaError._PARTITION_EOF:
        log.warning("committed topic consumer error: %s", err.str())
    return True
