"""The agent SDK: emit typed events through Kafka and learn the projector's decision.

Every emit validates the event and its envelope fields first and raises InvalidEventError before
anything is sent. Producing uses Kafka's idempotent producer (acks=all), keyed by stream, so one
stream's events stay in one partition and in order.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypedDict

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from eventstore.core.auth import Credential
from eventstore.core.errors import BrokerError, ConfigurationError, InvalidEventError
from eventstore.core.events import Event, dump_payloads, validate_event
from eventstore.core.ids import event_id_texts, next_event_id
from eventstore.core.outcomes import EmitResult, Outcome
from eventstore.core.records import Envelope, LeaseRef, RecordedEvent
from eventstore.core.settings import Settings
from eventstore.core.validation import check_name, check_stream
from eventstore.discovery import dev_credential, resolve_settings
from eventstore.kafka.config import agent_producer_config, ensure_topics
from eventstore.postgres import eventlog
from eventstore.postgres.connection import Database, converted_errors
from eventstore.postgres.outcomes import lookup_outcomes
from eventstore.sdk.listener import OutcomeListener
from eventstore.sdk.pending import EmitHandle as EmitHandle
from eventstore.sdk.pending import PendingOutcomes
from eventstore.sdk.prepare import HasLeaseRef as HasLeaseRef
from eventstore.sdk.prepare import Preparer, check_options
from eventstore.wire.envelope import Headers

if TYPE_CHECKING:
    from consumers.subscriber import Subscriber
    from consumers.views import LocalView, Reducer, StreamState


log = logging.getLogger(__name__)
# An emit this long after the previous one is sent at once instead of after linger.ms (seconds).
SPARSE = 0.0005


def build_envelope(
    agent_id: str,
    event: Event,
    stream: str,
    *,
    expected_version: int | None,
    idempotency_key: str | None,
    correlation_id: uuid.UUID | None,
    causation_id: uuid.UUID | None,
    lease: LeaseRef | HasLeaseRef | None,
) -> Envelope:
    """Validate everything an agent gave and wrap it; InvalidEventError names what is wrong (the same
    checks as :meth:`AgentClient.emit`, which writes the message without building an Envelope)."""
    payload = validate_event(event)
    check_stream(stream)
    ref = check_options(expected_version, idempotency_key, correlation_id, causation_id, lease)
    event_id = uuid.uuid4()
    # Every field was checked above (the payload by its own model), so the envelope is built without
    # validating it a second time.
    return Envelope.model_construct(
        event_id=event_id, idempotency_key=str(event_id) if idempotency_key is None else idempotency_key,
        stream=stream, expected_version=expected_version,
        agent_id=check_name("agent_id", agent_id), correlation_id=correlation_id or event_id,
        causation_id=causation_id, occurred_at=datetime.now(UTC), type=event.event_type,
        schema_version=event.schema_version, payload=payload, lease=ref,
    )


class AgentClient:
    """Emit events and read streams as one agent. Thread-safe; use as a context manager.

    ``credential`` (or ``EVENTSTORE_AGENT_CREDENTIAL``) is the agent's credential from
    ``eventstore agents add``; every envelope is signed with it (a running ``eventstore dev`` in this
    folder provides the credentials of the agents it registered). Without one, envelopes go unsigned and
    a projector with authentication on (the default) rejects them as ``bad_signature``.
    """

    # An emit this long after the previous one is sent at once (the send-at-once rule for lone emits);
    # ``math.inf`` leaves every emit to linger.ms (``eventstore bench broker-growth`` compares both).
    sparse_after: float = SPARSE
    # emit_many dumps the payloads of this many events with one pydantic call: a few dozen share most of
    # the call's cost, and fewer of them are alive at once for the collector to promote.
    dump_chunk: int = 64

    def __init__(self, agent_id: str, settings: Settings | None = None, *, credential: str | Credential | None = None,
                 ensure_topic: bool = True) -> None:
        self.agent_id = check_name("agent_id", agent_id)
        self.settings = resolve_settings(settings, need_kafka=True)
        self.settings.require_kafka()
        if credential is None and self.settings.agent_credential is not None:
            credential = self.settings.agent_credential.get_secret_value()
        if credential is None:
            credential = dev_credential(self.agent_id)  # registered by a running `eventstore dev`
        self._credential = Credential.parse(credential) if isinstance(credential, str) else credential
        database = Database(self.settings.require_database(), application_name=f"eventstore-agent:{agent_id}"[:63])
        if ensure_topic:
            ensure_topics(self.settings, {self.settings.intake_topic: self.settings.intake_partitions})
        self._pending = PendingOutcomes()
        self._listener = OutcomeListener(database, agent_id, pending=self._pending, credential=self._credential)
        self._pool = database.pool(min_size=1, max_size=4, name=f"agent-{agent_id}")
        # Checks and writes each emit's message (sdk/prepare.py); its writer also serves emit_envelope.
        self._prep = Preparer(self.agent_id, self._credential, self.settings.max_event_bytes, self._pending)
        self._writer = self._prep.writer
        self._topic = self.settings.intake_topic
        self._last_emit = 0.0  # time.monotonic() of the previous emit (see _produce_one)
        # One delivery callback for every message, called only on failures (no per-message callback object).
        self._producer = Producer(agent_producer_config(self.settings, on_delivery=self._undelivered))
        self._closed = threading.Event()
        self._kick = threading.Event()  # set by _send_now: the poller flushes
        self._subscriber: Subscriber | None = None
        self.view: LocalView | None = None
        self._poller = threading.Thread(target=self._poll, name=f"producer-{agent_id}", daemon=True)
        self._poller.start()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._producer.flush(10)
        if self._subscriber is not None:
            self._subscriber.stop()
        self._closed.set()
        self._kick.set()
        self._poller.join(5)
        self._listener.close()
        self._pool.close()

    @property
    def outcome_listener_error(self) -> BaseException | None:
        """Why the outcome listener stopped (pending emits then time out), or None while it runs."""
        return self._listener.error

    def _poll(self) -> None:
        """The producer's service thread: serves delivery reports (failures only) and sends at once what
        :meth:`_send_now` asked for. It sends by flushing with a short wait: the producer ignores
        linger.ms while a flush runs, and a flush that returns at once may end before the producer's
        broker thread looked (measured: the message then waited out linger.ms), so the caller's thread
        does not do it."""
        while not self._closed.is_set():
            if self._kick.wait(0.05):
                self._kick.clear()
                self._producer.flush(0.01)
            else:
                self._producer.poll(0)

    # -- writing -----------------------------------------------------------------------------
    def emit(
        self,
        event: Event,
        stream: str,
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        correlation_id: uuid.UUID | None = None,
        causation_id: uuid.UUID | None = None,
        lease: LeaseRef | HasLeaseRef | None = None,
    ) -> EmitHandle:
        """Send an event without waiting for its outcome. Without an idempotency key, each call
        is a new intent; pass the same key on a retry."""
        if self._closed.is_set():
            raise BrokerError("the client is closed")
        handle, key, value, headers = self._prep.prepare(event, stream, expected_version, idempotency_key,
                                                         correlation_id, causation_id, lease, next_event_id())
        return self._send_one(handle, key, value, headers)

    def emit_envelope(self, env: Envelope) -> EmitHandle:
        """Send a prepared envelope (built by :func:`build_envelope`)."""
        if self._closed.is_set():
            raise BrokerError("the client is closed")
        key, value, headers = self._writer.encode(env)
        self._prep.check_size(value, env.type, env.stream)
        handle = EmitHandle(env.event_id, env.stream, env.idempotency_key, self._pending)
        return self._send_one(handle, key, value, headers)

    def _send_one(self, handle: EmitHandle, key: bytes, value: bytes, headers: Headers) -> EmitHandle:
        """Register the handle, then produce its message; a refused produce fails the handle at once."""
        now = time.monotonic()
        self._pending.add(handle, now)
        try:
            self._produce_one(key, value, headers, now)
        except BrokerError as e:
            self._pending.fail(handle._key, e)  # nothing waits for an outcome that cannot come
            raise
        return handle

    def _produce(self, key: bytes, value: bytes, headers: Headers) -> None:
        while True:
            try:
                self._producer.produce(self._topic, value, key, headers=headers)
                return
            except BufferError:
                self._producer.poll(0.01)  # local queue full: let deliveries drain
            except KafkaException as e:
                raise BrokerError(f"the Kafka client refused the message for {self._topic}: {e}") from e

    def _produce_one(self, key: bytes, value: bytes, headers: Headers, now: float) -> None:
        """Produce one message (``now``: time.monotonic()). A sparse emit (SPARSE seconds or more after the
        previous one: below ~2,000 emits/s) is sent at once, since there is nothing to batch it with and a
        lone event must not wait out linger.ms; a dense stream of emits is left to linger.ms, so produce
        requests carry many messages (the broker's CPU goes mostly to taking requests)."""
        sparse = now - self._last_emit >= self.sparse_after
        self._last_emit = now
        self._produce(key, value, headers)
        if sparse:
            self._send_now()

    def _undelivered(self, err: KafkaError | None, msg: Message) -> None:
        """The producer's delivery callback (on the poller thread; failures only): the handle fails. The
        event id is read from the value, the SDK's own JSON (a delivery report carries no headers)."""
        if err is None:
            return
        try:
            event_id = uuid.UUID(json.loads(msg.value() or b"{}")["event_id"])
        except (ValueError, KeyError, TypeError):  # not our message: nobody waits for it
            log.warning("a message the broker did not take names no event: %s", err.str())
            return
        self._pending.fail(event_id, BrokerError(
            f"the broker did not take event {event_id}: {err.str()}; re-emit with the same key"))

    def emit_and_wait(
        self,
        event: Event,
        stream: str,
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        correlation_id: uuid.UUID | None = None,
        causation_id: uuid.UUID | None = None,
        lease: LeaseRef | HasLeaseRef | None = None,
        timeout: float = 10.0,
    ) -> EmitResult:
        """Emit and wait for the decision: COMMITTED, DUPLICATE, CONFLICT or REJECTED."""
        handle = self.emit(event, stream, expected_version=expected_version, idempotency_key=idempotency_key,
                           correlation_id=correlation_id, causation_id=causation_id, lease=lease)
        self._send_now()  # the caller waits for this event alone
        return handle.result(timeout)

    def _send_now(self) -> None:
        """Have what the producer holds sent without waiting out linger.ms (by the poller thread)."""
        self._kick.set()

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until the broker acknowledged everything emitted so far."""
        left = self._producer.flush(timeout)
        if left:
            raise BrokerError(f"{left} event(s) still unacknowledged by the broker after {timeout}s")

    # -- deciding on committed state ---------------------------------------------------------
    def follow(self, streams: str | Callable[[str], bool] | None = None, *, reducer: Reducer | None = None,
               timeout: float = 30.0) -> LocalView:
        """Keep a local view of committed events (all streams, those starting with a prefix, or those a
        predicate accepts), fed by a subscriber; returns once the view has caught up with the log."""
        from consumers.subscriber import Subscriber
        from consumers.views import LocalView, merge_payloads

        if self.view is not None:
            return self.view
        accept = (lambda s, p=streams: s.startswith(p)) if isinstance(streams, str) else streams
        self.view = LocalView(reducer or merge_payloads, accept)
        self._subscriber = Subscriber(f"agent-{self.agent_id}", view=self.view, settings=self.settings).start()
        with converted_errors(), self._pool.connection() as conn, conn.cursor() as cur:
            head = eventlog.head_position(cur)
        self.view.wait_for_position(head, timeout)
        return self.view

    def retry_on_conflict(
        self,
        stream: str,
        decide: Callable[[StreamState | None], Event | None],
        *,
        attempts: int = 5,
        idempotency_key: str | None = None,
        timeout: float = 10.0,
    ) -> EmitResult | None:
        """Decide on the view's committed state of ``stream`` and emit with its version; on CONFLICT
        wait until the view shows the newer version and decide again. ``decide`` returns the event, or
        None to give up (e.g. out of stock), which returns None. Needs :meth:`follow` first.
        Pass ``idempotency_key`` to make calling it again (after an EmitTimeout) safe: all attempts
        share the key, and a conflict does not consume it."""
        if self.view is None:
            raise ConfigurationError("call client.follow(...) before retry_on_conflict: it decides on the local view")
        key = idempotency_key or str(uuid.uuid4())
        self.view.wait_for_version(stream, self.stream_version(stream), timeout)
        result: EmitResult | None = None
        for _ in range(attempts):
            state = self.view.get(stream)
            event = decide(state)
            if event is None:
                return None
            result = self.emit_and_wait(event, stream, expected_version=state.version if state else 0,
                                        idempotency_key=key, timeout=timeout)
            if result.status is not Outcome.CONFLICT:
                return result
            current = result.current_version if result.current_version is not None else self.stream_version(stream)
            self.view.wait_for_version(stream, current, timeout)
        return result

    # -- reading -----------------------------------------------------------------------------
    def wait_for_position(self, position: int, timeout: float = 10.0) -> None:
        """Read-your-writes for database reads: wait until the log (and with it every read model,
        which commits in the same transaction) includes ``position``."""
        with converted_errors(), self._pool.connection() as conn, conn.cursor() as cur:
            eventlog.wait_for_position(cur, position, timeout)

    def stream_version(self, stream: str, *, min_position: int | None = None) -> int:
        """The stream's committed version (0 for a stream with no events)."""
        if min_position is not None:
            self.wait_for_position(min_position)
        with converted_errors(), self._pool.connection() as conn, conn.cursor() as cur:
            return eventlog.stream_version(cur, stream)

    def read_stream(self, stream: str, from_version: int = 0, *,
                    min_position: int | None = None) -> list[RecordedEvent]:
        """Committed events of a stream after ``from_version``, in version order."""
        if min_position is not None:
            self.wait_for_position(min_position)
        with converted_errors(), self._pool.connection() as conn, conn.cursor() as cur:
            return eventlog.read_stream(cur, stream, from_version)

    def outcome(self, event_id: uuid.UUID) -> EmitResult | None:
        """The recorded decision on an event id, or None while it is undecided."""
        with converted_errors(), self._pool.connection() as conn, conn.cursor() as cur:
            key_id = None if self._credential is None else self._credential.key_id
            return lookup_outcomes(cur, [event_id], self.agent_id, identity=True, key_id=key_id).get(event_id)

    def emit_many(
        self,
        items: Iterable[tuple[Event, str] | tuple[Event, str, EmitOptions]],
    ) -> list[EmitHandle]:
        """Send many events at once, without waiting for outcomes; one handle per item, in order.

        Each item is ``(event, stream)`` or ``(event, stream, options)`` with the keyword arguments of
        :meth:`emit` in ``options``. Every item is checked, and its message written and signed, before
        anything is sent, so an invalid item raises InvalidEventError and nothing is produced; then all
        handles are registered at once and every message produced, and the producer is polled once.
        Order per stream is the order of ``items``.
        """
        if self._closed.is_set():
            raise BrokerError("the client is closed")
        batch = items if isinstance(items, list | tuple) else list(items)
        ids = event_id_texts(len(batch))
        handles: list[EmitHandle] = []
        messages: list[tuple[bytes, bytes, Headers]] = []
        prepare = self._prep.prepare
        events = [item[0] for item in batch]
        chunk = self.dump_chunk
        dumped: list[dict[str, Any]] | None = None
        for i, item in enumerate(batch):
            if i % chunk == 0:  # one pydantic call per chunk of one event class
                dumped = dump_payloads(events[i:i + chunk])
            payload = None if dumped is None else dumped[i % chunk]
            try:
                if len(item) == 2:
                    handle, key, value, headers = prepare(item[0], item[1], None, None, None, None, None, ids[i],
                                                          payload)
                else:
                    options: EmitOptions = item[2]
                    handle, key, value, headers = prepare(
                        item[0], item[1], options.get("expected_version"), options.get("idempotency_key"),
                        options.get("correlation_id"), options.get("causation_id"), options.get("lease"), ids[i],
                        payload)
            except InvalidEventError as e:
                raise InvalidEventError(f"emit_many item {i}: {e} (nothing was sent)") from e
            handles.append(handle)
            messages.append((key, value, headers))
        self._pending.add_many(handles)
        for i, (key, value, headers) in enumerate(messages):
            try:
                self._produce(key, value, headers)
            except BrokerError as e:
                for h in handles[i:]:
                    self._pending.fail(h._key, e)
                self._send_now()
                raise BrokerError(f"emit_many item {i}: {e}; items before it were sent and get outcomes, it and "
                                  "the items after it were not sent (emit again with the same idempotency keys: "
                                  "what was sent comes back DUPLICATE)") from e
        self._send_now()  # the batch is complete: send it now, not after linger.ms
        return handles


class EmitOptions(TypedDict, total=False):
    """The per-event keyword arguments of :meth:`AgentClient.emit`, for :meth:`AgentClient.emit_many`."""

    expected_version: int | None
    idempotency_key: str | None
    correlation_id: uuid.UUID | None
    causation_id: uuid.UUID | None
    lease: LeaseRef | HasLeaseRef | None
