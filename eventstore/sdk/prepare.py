"""Checking and writing one emit's message: every check of :func:`~eventstore.sdk.client.build_envelope`,
then the signed bytes, without an Envelope model (the SDK's hot path, no I/O).

The checks are the same and a refusal names the same fault first as ``validate_event`` + ``check_stream``
+ :func:`check_options` in that order; what is cheaper: a payload the class's compiled check accepts is not
validated by pydantic a second time, its NUL walk runs only when the written JSON holds ``\\u0000``, and a
stream name is checked once per client (:class:`KnownStreams`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Protocol

from eventstore.core.auth import Credential
from eventstore.core.errors import InvalidEventError
from eventstore.core.events import Event, check_written_nul, emit_payload
from eventstore.core.limits import check_size
from eventstore.core.records import LeaseRef
from eventstore.core.validation import check_name, check_no_nul, check_stream
from eventstore.sdk.pending import EmitHandle, PendingOutcomes
from eventstore.wire.envelope import EnvelopeWriter, Headers


class HasLeaseRef(Protocol):
    @property
    def ref(self) -> LeaseRef: ...


def check_options(expected_version: int | None, idempotency_key: str | None, correlation_id: uuid.UUID | None,
                  causation_id: uuid.UUID | None, lease: LeaseRef | HasLeaseRef | None) -> LeaseRef | None:
    """Check an emit's optional fields; the lease reference to write."""
    if expected_version is not None and (
        isinstance(expected_version, bool) or not isinstance(expected_version, int) or expected_version < 0
    ):
        raise InvalidEventError(f"expected_version must be None or an int >= 0, got {expected_version!r}")
    if idempotency_key is not None:
        check_name("idempotency_key", idempotency_key)
    ref = lease if lease is None or isinstance(lease, LeaseRef) else getattr(lease, "ref", None)
    if lease is not None and not isinstance(ref, LeaseRef):
        raise InvalidEventError(f"lease must be a Lease or LeaseRef, got {type(lease).__name__}")
    if correlation_id is not None and not isinstance(correlation_id, uuid.UUID):
        raise InvalidEventError(f"correlation_id must be a uuid.UUID, got {correlation_id!r}")
    if causation_id is not None and not isinstance(causation_id, uuid.UUID):
        raise InvalidEventError(f"causation_id must be a uuid.UUID, got {causation_id!r}")
    return ref


class KnownStreams(set[str]):
    """Stream names that passed :func:`check_stream`, so a stream written again is not checked again
    (only exact ``str`` values are looked up); bounded: forgets them all beyond ``limit``."""

    limit = 4096

    def remember(self, stream: str) -> None:
        if len(self) >= self.limit:
            self.clear()
        self.add(stream)


class Preparer:
    """One agent's emits: checks each event and writes its signed message (:meth:`prepare`)."""

    __slots__ = ("_max_bytes", "_pending", "_streams", "writer")

    def __init__(self, agent_id: str, credential: Credential | None, max_bytes: int, pending: PendingOutcomes) -> None:
        self.writer = EnvelopeWriter(agent_id, credential)
        self._max_bytes = max_bytes
        self._pending = pending
        self._streams = KnownStreams()

    def prepare(self, event: Event, stream: str, expected_version: int | None, idempotency_key: str | None,
                correlation_id: uuid.UUID | None, causation_id: uuid.UUID | None,
                lease: LeaseRef | HasLeaseRef | None, eid: str,
                dumped: dict[str, Any] | None = None) -> tuple[EmitHandle, bytes, bytes, Headers]:
        """The handle and the signed (key, value, headers) of one event with the event id ``eid`` (canonical
        text); InvalidEventError names what is wrong. Nothing is sent or registered. ``dumped``: the event's
        ``model_dump(mode="json")`` if the caller made it (a batch's :func:`dump_payloads`)."""
        payload, walk = emit_payload(event, dumped)
        try:
            if type(stream) is not str or stream not in self._streams:
                self._streams.remember(check_stream(stream))
            ref = None if (expected_version is None and idempotency_key is None and correlation_id is None
                           and causation_id is None and lease is None) else check_options(
                expected_version, idempotency_key, correlation_id, causation_id, lease)
        except InvalidEventError:
            if walk:  # validate_event walks the payload for NUL before these checks: its refusal comes first
                check_no_nul(event.event_type, payload)
            raise
        key = eid if idempotency_key is None else idempotency_key
        msg_key, value, headers = self.writer.write(
            eid, key, stream, expected_version, eid if correlation_id is None else correlation_id, causation_id,
            datetime.now(UTC), event.event_type, event.schema_version, payload, ref)
        if walk:
            check_written_nul(event.event_type, payload, value)
        if len(value) > self._max_bytes:
            self.check_size(value, event.event_type, stream)
        return EmitHandle(None, stream, key, self._pending, eid), msg_key, value, headers

    def check_size(self, value: bytes, event_type: str, stream: str) -> None:
        """The projector's size limit, refused here before anything is sent."""
        if len(value) > self._max_bytes:
            check_size(len(value), self._max_bytes, f"event {event_type} for stream {stream!r}",
                       "EVENTSTORE_MAX_EVENT_BYTES")
