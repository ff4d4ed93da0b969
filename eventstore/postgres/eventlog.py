"""The event log adapter: append under the log-head lock, read streams and the global log.

Why a lock on one row: positions must be handed out in commit order. With a plain sequence, two
projector transactions can take positions 10 and 11 and commit 11 first; a reader tailing
``position > 10`` then moves past 10 and never sees it (promise 4). Appenders therefore lock the
single ``log_head`` row for the rest of their transaction: the next appender waits, positions have
no holes, and the hash chain has one well-defined predecessor. The lock is taken last, after all
checks; it is then held through the inserts, the read-model updates and the commit, which is the
price of commit-ordered positions (every appender's write phase is serialised; a batch of 2,000
keeps that cheap per event). Lock order everywhere: lease tables, agent credentials, agents,
resources, streams, log_head (the coordinator follows it too), so appenders never deadlock each other.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row, kwargs_row

from eventstore.core.errors import EmitTimeout, SchemaNotReadyError
from eventstore.core.hashing import (
    GENESIS,
    canonical_json,
    chain_hash,
    chain_link,
    hashed_time,
    intent_hash,
    legacy_payload_texts,
)
from eventstore.core.records import RECORDED_FIELDS, DirectEvent, NewEvent, RecordedEvent
from eventstore.postgres import binarrays
from eventstore.postgres.binarrays import bytea_array, int4_array, int8_array, text_array
from eventstore.wire.committed import PRINTED

Cursor = psycopg.Cursor[Any]
_new = object.__new__
_set = object.__setattr__

LOCK_HEAD = "SELECT position, hash, clock_timestamp() FROM log_head FOR UPDATE"
MOVE_HEAD = "UPDATE log_head SET position = %b, hash = %b"
ENSURE_STREAMS = (
    "INSERT INTO streams (stream, version) SELECT s, 0 FROM unnest(%b::text[]) AS s ORDER BY s "
    "ON CONFLICT (stream) DO NOTHING"
)
LOCK_STREAMS = "SELECT stream, version FROM streams WHERE stream = ANY(%b::text[]) ORDER BY stream FOR UPDATE"
SET_STREAM_VERSIONS = (
    "UPDATE streams SET version = v.version FROM unnest(%b::text[], %b::bigint[]) AS v(stream, version) "
    "WHERE streams.stream = v.stream"
)
INSERT_EVENTS = """
INSERT INTO events (position, event_id, stream, version, type, schema_version, payload, agent_id,
                    idempotency_key, correlation_id, causation_id, occurred_at, recorded_at,
                    lease_resource, fencing_token, intent_hash, prev_hash, hash)
SELECT p, e, s, v, t, sv, pl::jsonb, a, k, c, ca, o, %b::timestamptz, lr, ft, ih, ph, h
FROM unnest(%b::bigint[], %b::uuid[], %b::text[], %b::bigint[], %b::text[], %b::int[], %b::text[],
            %b::text[], %b::text[], %b::uuid[], %b::uuid[], %b::timestamptz[], %b::text[], %b::bigint[],
            %b::bytea[], %b::bytea[], %b::bytea[])
     AS x(p, e, s, v, t, sv, pl, a, k, c, ca, o, lr, ft, ih, ph, h)
"""
EVENT_COLUMNS = ", ".join(RECORDED_FIELDS)
READ_STREAM = (
    f"SELECT {EVENT_COLUMNS} FROM events WHERE stream = %s AND version > %s ORDER BY version LIMIT %s"
)
READ_ALL = f"SELECT {EVENT_COLUMNS} FROM events WHERE position > %s ORDER BY position LIMIT %s"
STREAM_VERSION = "SELECT version FROM streams WHERE stream = %s"
HEAD_POSITION = "SELECT position FROM log_head"
HEAD = "SELECT position, hash FROM log_head"
HASH_AT = "SELECT hash FROM events WHERE position = %s"
READ_CHAIN = (
    f"SELECT {EVENT_COLUMNS}, intent_hash FROM events WHERE position > %s AND position <= %s "
    "ORDER BY position LIMIT %s"
)


def to_recorded(row: dict[str, Any]) -> RecordedEvent:
    """The one row mapper: a row read as a dict (``dict_row``) onto RecordedEvent, by column name."""
    return RecordedEvent(**{name: row[name] for name in RECORDED_FIELDS})


def lock_streams(cur: Cursor, streams: Iterable[str]) -> dict[str, int]:
    """Create missing stream rows at version 0 and lock all of them (sorted, so lockers never deadlock)."""
    names = sorted(set(streams))
    if not names:
        return {}
    binarrays.register(cur)
    param = text_array(names)  # built once for both statements
    cur.execute(ENSURE_STREAMS, (param,))
    cur.execute(LOCK_STREAMS, (param,))
    return {s: int(v) for s, v in cur.fetchall()}


def set_stream_versions(cur: Cursor, versions: dict[str, int]) -> None:
    if versions:
        names = list(versions)
        binarrays.register(cur)
        cur.execute(SET_STREAM_VERSIONS, (text_array(names), int8_array([versions[n] for n in names])))


@dataclass
class Columns:
    """The events of one append, column by column (the shape the INSERT takes), so a batch of thousands
    builds no object per event before the RecordedEvents it returns. Fill it with :meth:`add`."""

    event_id: list[uuid.UUID] = field(default_factory=list)
    stream: list[str] = field(default_factory=list)
    version: list[int] = field(default_factory=list)
    type: list[str] = field(default_factory=list)
    schema_version: list[int] = field(default_factory=list)
    payload_json: list[str] = field(default_factory=list)
    payload: list[dict[str, Any]] = field(default_factory=list)
    agent_id: list[str] = field(default_factory=list)
    idempotency_key: list[str] = field(default_factory=list)
    correlation_id: list[uuid.UUID] = field(default_factory=list)
    causation_id: list[uuid.UUID | None] = field(default_factory=list)
    occurred_at: list[datetime | None] = field(default_factory=list)
    lease_resource: list[str | None] = field(default_factory=list)
    fencing_token: list[int | None] = field(default_factory=list)
    intent: list[bytes] = field(default_factory=list)
    # Filled by append_columns: each event id's text as hashed into the chain (the outcome notification
    # and the committed topic print the same text).
    event_text: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.event_id)

    def add(self, event_id: uuid.UUID, stream: str, version: int, type: str, schema_version: int,
            payload_json: str, payload: dict[str, Any], agent_id: str, idempotency_key: str,
            correlation_id: uuid.UUID, causation_id: uuid.UUID | None, occurred_at: datetime | None,
            lease_resource: str | None, fencing_token: int | None, intent: bytes) -> None:
        """One event whose version is decided; ``payload_json`` is its canonical JSON (hashed in ``intent``)."""
        self.event_id.append(event_id)
        self.stream.append(stream)
        self.version.append(version)
        self.type.append(type)
        self.schema_version.append(schema_version)
        self.payload_json.append(payload_json)
        self.payload.append(payload)
        self.agent_id.append(agent_id)
        self.idempotency_key.append(idempotency_key)
        self.correlation_id.append(correlation_id)
        self.causation_id.append(causation_id)
        self.occurred_at.append(occurred_at)
        self.lease_resource.append(lease_resource)
        self.fencing_token.append(fencing_token)
        self.intent.append(intent)


def append(cur: Cursor, events: Sequence[NewEvent]) -> list[RecordedEvent]:
    """Append events in the caller's transaction; positions follow the order given.

    The caller must hold the stream locks and have decided the versions.
    """
    cols = Columns()
    for e in events:
        cols.add(e.event_id, e.stream, e.version, e.type, e.schema_version, e.payload_json,
                 e.payload if e.payload is not None else json.loads(e.payload_json), e.agent_id, e.idempotency_key,
                 e.correlation_id, e.causation_id, e.occurred_at, e.lease_resource, e.fencing_token, e.intent)
    return append_columns(cur, cols)


def append_columns(cur: Cursor, c: Columns) -> list[RecordedEvent]:
    """Append the events of ``c`` in the caller's transaction, in that order: lock the log head, chain
    every event to the one before, insert them in one statement, move the head. Returns them as recorded
    (positions, the database's recorded-at, chain links), in commit order.

    The caller must hold the stream locks and have decided the versions.
    """
    n = len(c)
    if not n:
        return []
    cur.execute(LOCK_HEAD)
    row = cur.fetchone()
    if row is None:
        raise SchemaNotReadyError("the log_head row is missing; run `eventstore migrate`")
    head, prev, recorded_at = int(row[0]), bytes(row[1]), row[2]
    recorded_text = hashed_time(recorded_at)  # the same for the whole batch: formatted once
    positions = list(range(head + 1, head + 1 + n))
    prevs: list[bytes] = []
    hashes: list[bytes] = []
    texts = c.event_text = [str(e) for e in c.event_id]
    recorded: list[RecordedEvent] = []
    # One pass: the chain link of each event and the RecordedEvent it returns, whose __dict__ is written in
    # one go (the fields of RECORDED_FIELDS, and the texts the chain hashed under PRINTED, which is not a
    # field: equality, repr and replace() ignore it), as records.recorded_event builds it.
    for position, event_id, text, stream, version, type_, schema_version, payload_json, payload, agent_id, key, \
            correlation, causation, occurred, lease, token, intent in zip(
                positions, c.event_id, texts, c.stream, c.version, c.type, c.schema_version, c.payload_json,
                c.payload, c.agent_id, c.idempotency_key, c.correlation_id, c.causation_id, c.occurred_at,
                c.lease_resource, c.fencing_token, c.intent, strict=True):
        # correlation_id is the event id unless the agent set one: print the UUID once
        correlation_text = text if correlation == event_id else str(correlation)
        causation_text = "" if causation is None else str(causation)
        occurred_text = hashed_time(occurred)
        h = chain_link(prev, position, text, stream, version, agent_id, key, correlation_text, causation_text,
                       occurred_text, recorded_text, lease or "", "" if token is None else str(token), intent)
        ev: RecordedEvent = _new(RecordedEvent)
        _set(ev, "__dict__", {
            "position": position, "event_id": event_id, "stream": stream, "version": version, "type": type_,
            "schema_version": schema_version, "payload": payload, "agent_id": agent_id, "idempotency_key": key,
            "correlation_id": correlation, "causation_id": causation, "occurred_at": occurred,
            "recorded_at": recorded_at, "lease_resource": lease, "fencing_token": token, "prev_hash": prev,
            "hash": h,
            PRINTED: (text, correlation_text, causation_text, occurred_text, recorded_text, payload_json)})
        recorded.append(ev)
        prevs.append(prev)
        hashes.append(h)
        prev = h
    # Columns psycopg would dump element by element in Python go as prebuilt binary arrays (binarrays.py);
    # uuid and timestamptz columns keep psycopg's dumpers (no faster in Python; as text, PostgreSQL's
    # uuid_in costs it 0.25 us more per element than the binary form, measured).
    binarrays.register(cur)
    cur.execute(INSERT_EVENTS, (
        recorded_at, int8_array(positions), c.event_id, text_array(c.stream), int8_array(c.version),
        text_array(c.type), int4_array(c.schema_version), text_array(c.payload_json), text_array(c.agent_id),
        text_array(c.idempotency_key), c.correlation_id, c.causation_id, c.occurred_at,
        text_array(c.lease_resource), int8_array(c.fencing_token), bytea_array(c.intent), bytea_array(prevs),
        bytea_array(hashes),
    ))
    cur.execute(MOVE_HEAD, (head + n, prev))
    return recorded


def append_direct(cur: Cursor, items: Sequence[DirectEvent]) -> list[RecordedEvent]:
    """Append events at the streams' next versions, in the caller's transaction."""
    versions = lock_streams(cur, (i.stream for i in items))
    new: list[NewEvent] = []
    for item in items:
        versions[item.stream] += 1
        payload_json = canonical_json(item.event.model_dump(mode="json"))
        event_id = uuid.uuid4()
        new.append(NewEvent(
            event_id=event_id, stream=item.stream, version=versions[item.stream],
            type=item.event.event_type, schema_version=item.event.schema_version, payload_json=payload_json,
            agent_id=item.agent_id, idempotency_key=item.idempotency_key or f"direct:{event_id}",
            correlation_id=item.correlation_id or event_id, causation_id=item.causation_id,
            occurred_at=None, lease_resource=item.lease_resource, fencing_token=item.fencing_token,
            intent=intent_hash(item.event.event_type, item.event.schema_version, item.stream, payload_json),
        ))
    recorded = append(cur, new)
    set_stream_versions(cur, versions)
    return recorded


def stream_version(cur: Cursor, stream: str) -> int:
    cur.execute(STREAM_VERSION, (stream,))
    row = cur.fetchone()
    return 0 if row is None else int(row[0])


def read_stream(cur: Cursor, stream: str, from_version: int = 0, limit: int = 10_000) -> list[RecordedEvent]:
    """Events of a stream with version > from_version, in version order."""
    with cur.connection.cursor(row_factory=kwargs_row(RecordedEvent)) as rc:
        rc.execute(READ_STREAM, (stream, from_version, limit))
        return rc.fetchall()


def read_all(cur: Cursor, after_position: int = 0, limit: int = 10_000) -> list[RecordedEvent]:
    """Committed events with position > after_position, in position order."""
    with cur.connection.cursor(row_factory=kwargs_row(RecordedEvent)) as rc:
        rc.execute(READ_ALL, (after_position, limit))
        return rc.fetchall()


def head_position(cur: Cursor) -> int:
    cur.execute(HEAD_POSITION)
    row = cur.fetchone()
    return 0 if row is None else int(row[0])


def wait_for_position(cur: Cursor, position: int, timeout: float = 10.0) -> None:
    """Block until the log includes ``position`` (read-your-writes on a lagging reader)."""
    deadline = time.monotonic() + timeout
    while (head := head_position(cur)) < position:
        if time.monotonic() > deadline:
            raise EmitTimeout(f"the event log is at position {head}, not yet {position}, after {timeout}s")
        time.sleep(0.01)


@dataclass(frozen=True)
class ChainReport:
    """What ``verify_chain`` found: events checked, the head it checked against, the first bad link."""

    checked: int
    first_bad_position: int | None
    problem: str | None
    head_position: int = 0
    head_hash: bytes = GENESIS

    @property
    def ok(self) -> bool:
        return self.first_bad_position is None


def head(cur: Cursor) -> tuple[int, bytes]:
    """The log head: the newest position and its hash (0 and GENESIS for an empty log)."""
    cur.execute(HEAD)
    row = cur.fetchone()
    if row is None:
        raise SchemaNotReadyError("the log_head row is missing; run `eventstore migrate`")
    return int(row[0]), bytes(row[1])


def hash_at(cur: Cursor, position: int) -> bytes | None:
    """The stored hash of the event at ``position`` (GENESIS for 0), or None if the log has no such event."""
    if position == 0:
        return GENESIS
    cur.execute(HASH_AT, (position,))
    row = cur.fetchone()
    return None if row is None else bytes(row[0])


def _intent_matches(ev: RecordedEvent, intent: bytes) -> bool:
    if intent == intent_hash(ev.type, ev.schema_version, ev.stream, canonical_json(ev.payload)):
        return True
    return any(intent == intent_hash(ev.type, ev.schema_version, ev.stream, text)
               for text in legacy_payload_texts(ev.payload))


def verify_chain(cur: Cursor, page: int = 5000) -> ChainReport:
    """Recompute every hash from the stored fields up to the log head; report the first event that does
    not verify, a log shorter than its head (the newest events deleted) or a head that is not the last hash."""
    head_pos, head_hash = head(cur)
    prev, expected_pos, checked = GENESIS, 1, 0

    def bad(position: int, problem: str) -> ChainReport:
        return ChainReport(checked, position, problem, head_pos, head_hash)

    while expected_pos <= head_pos:
        with cur.connection.cursor(row_factory=dict_row) as rc:
            rc.execute(READ_CHAIN, (expected_pos - 1, head_pos, page))
            rows = rc.fetchall()
        if not rows:
            return bad(expected_pos, f"the log ends at position {expected_pos - 1} but its head says {head_pos}: "
                                     "the newest events were deleted")
        for r in rows:
            ev = to_recorded(r)
            intent = bytes(r["intent_hash"])
            if ev.position != expected_pos:
                return bad(expected_pos, f"position {expected_pos} is missing")
            if not _intent_matches(ev, intent):
                return bad(ev.position, "type, stream or payload changed after commit")
            h = chain_hash(
                prev, position=ev.position, event_id=str(ev.event_id), stream=ev.stream, version=ev.version,
                agent_id=ev.agent_id, idempotency_key=ev.idempotency_key,
                correlation_id=str(ev.correlation_id),
                causation_id=None if ev.causation_id is None else str(ev.causation_id),
                occurred_at=ev.occurred_at, recorded_at=ev.recorded_at, lease_resource=ev.lease_resource,
                fencing_token=ev.fencing_token, intent=intent,
            )
            if ev.prev_hash != prev or ev.hash != h:
                return bad(ev.position, "hash chain broken: a recorded field was changed")
            prev, expected_pos, checked = h, expected_pos + 1, checked + 1
    if prev != head_hash:
        return bad(head_pos, "the log head's hash is not the hash of the last event")
    return ChainReport(checked, None, None, head_pos, head_hash)
