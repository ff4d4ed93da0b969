"""One intake batch, one PostgreSQL transaction (promises 1, 2, 5).

Order inside the transaction: lock and check the stored offsets (fences a zombie projector whose
partitions moved to another member) -> load what the log knows -> decide (pure) -> append ->
apply read models -> record the other outcomes and dead letters -> store the offsets -> notify the
agents. Either all of it commits or none of it, so a crash anywhere replays the batch from the stored
offsets and the decisions come out the same.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from eventstore.core.auth import (
    AgentKey,
    Credential,
    Guard,
    HolderRow,
    guard_for,
    signed_by,
    split_signed,
    split_signed_as,
)
from eventstore.core.auth import authenticate as signature_problem
from eventstore.core.decisions import Candidate, CommittedKey, Decision, KnownState, decide_batch
from eventstore.core.errors import (
    DecodeError,
    EventStoreError,
    InvalidEventError,
    OffsetsNotTrustedError,
)
from eventstore.core.events import Event, EventRegistry
from eventstore.core.hashing import canonical_json, intent_hash
from eventstore.core.limits import (
    DEFAULT_MAX_EVENT_BYTES,
    check_key,
    check_size,
    check_timestamp,
    check_values,
    may_hold_non_finite,
    may_hold_surrogates,
    offset_problem,
)
from eventstore.core.offsetorder import order_batch
from eventstore.core.outcomes import EmitResult, Outcome, ReasonCode
from eventstore.core.records import EnvelopeFields, RecordedEvent
from eventstore.core.validation import check_no_nul, check_stream, printable
from eventstore.postgres import binarrays, eventlog
from eventstore.postgres.binarrays import text_array
from eventstore.postgres.connection import Disposition, convert, disposition_of
from eventstore.postgres.offsets import ENSURE_OFFSETS, LOCK_OFFSETS, STORE_OFFSETS
from eventstore.postgres.readmodels import ReadModel, ReadModelError, apply_all
from eventstore.postgres.refusals import INSERT_IDENTITY_REFUSALS
from eventstore.wire.envelope import Headers, IntakeEnvelope, decode_intake, salvage_ids
from eventstore.wire.notifications import COMMITTED_CHANNEL, OutcomeSeal, channel_for, pack_rows
from eventstore.wire.rejections import EventConflicted, EventRejected, IdempotencyKeyReused

log = logging.getLogger(__name__)
_new = object.__new__
Cursor = psycopg.Cursor[Any]

LOCK_AGENTS = "SELECT agent_id, status, reason FROM agents WHERE agent_id = ANY(%b::text[]) ORDER BY agent_id FOR SHARE"
LOCK_RESOURCES = (
    "SELECT resource, fence_token FROM resources WHERE resource = ANY(%b::text[]) ORDER BY resource FOR SHARE"
)
COMMITTED_KEYS = (
    "SELECT e.agent_id, e.idempotency_key, e.position, e.stream, e.version, e.intent_hash "
    "FROM (SELECT DISTINCT a, k FROM unnest(%b::text[], %b::text[]) AS x(a, k)) x "
    "JOIN events e ON e.agent_id = x.a AND e.idempotency_key = x.k"
)
TAKEN_IDS = "SELECT event_id, agent_id FROM events WHERE event_id = ANY(%b::uuid[])"
GUARDS = "SELECT pattern, resource FROM guarded_streams ORDER BY pattern"
# Lock order (shared with the coordinator, see eventlog.py and leases.py): lease tables -> credentials
# -> agents -> resources -> streams -> log_head. FOR SHARE makes a renew, release, revoke or reclaim of
# these leases wait until the batch commits, so the holder checked here is the holder at commit.
LOCK_HOLDERS = (
    "SELECT resource, agent_id, mode, token, expires_at <= clock_timestamp() FROM lease_holders "
    "WHERE resource = ANY(%b::text[]) ORDER BY resource, agent_id FOR SHARE"
)
LOCK_KEYS = (
    "SELECT c.key_id, c.agent_id, c.secret, c.status, p.stream_patterns, p.event_types "
    "FROM agent_credentials c LEFT JOIN agent_permissions p ON p.agent_id = c.agent_id "
    "WHERE c.key_id = ANY(%b::text[]) ORDER BY c.key_id FOR SHARE OF c"
)
INSERT_OUTCOMES = """
INSERT INTO outcomes (event_id, agent_id, idempotency_key, stream, status, expected_version,
                      current_version, original_position, reason, source_partition, source_offset,
                      reason_code)
SELECT * FROM unnest(%b::uuid[], %b::text[], %b::text[], %b::text[], %b::text[], %b::bigint[],
                     %b::bigint[], %b::bigint[], %b::text[], %b::int[], %b::bigint[], %b::text[])
ON CONFLICT (event_id) DO NOTHING
"""
INSERT_DEAD_LETTERS = """
INSERT INTO dead_letters (topic, partition, "offset", key, value, reason)
SELECT %b, * FROM unnest(%b::int[], %b::bigint[], %b::bytea[], %b::bytea[], %b::text[])
ON CONFLICT DO NOTHING
"""
NOTIFY = "SELECT pg_notify(c, p) FROM unnest(%b::text[], %b::text[]) AS x(c, p)"
MAX_REASON = 2000


class PoisonBatchError(EventStoreError):
    """Some message of the batch cannot be stored; the projector splits the batch to dead-letter it."""


@dataclass(frozen=True)
class IntakeMessage:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def intake_messages(msgs: Sequence[Any]) -> list[IntakeMessage]:
    """The consumer's messages that carry no error, as IntakeMessages (the same objects the constructor
    builds, without the frozen ``__init__``'s setattr per field: this runs once per consumed message).
    ``msgs`` are confluent_kafka Messages; one with an error (end of partition, ...) is left out."""
    out = []
    for m in msgs:
        if m.error() is None:
            im: IntakeMessage = _new(IntakeMessage)
            im.__dict__.update(partition=m.partition(), offset=m.offset(), key=m.key(), value=m.value())
            out.append(im)
    return out


@dataclass(frozen=True)
class DeadLetter:
    message: IntakeMessage
    reason: str


@dataclass
class BatchResult:
    committed: list[RecordedEvent] = field(default_factory=list)
    results: list[EmitResult] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    next_offsets: dict[int, int] = field(default_factory=dict)
    # Partitions where this batch was behind the stored offsets (replay or zombie): seek there.
    behind: dict[int, int] = field(default_factory=dict)
    # Partitions cut at a hole in the offsets (core/offsetorder.py): seek back to this offset.
    rewind: dict[int, int] = field(default_factory=dict)
    rejections: list[Event] = field(default_factory=list)

    def count(self, status: Outcome) -> int:
        return sum(1 for r in self.results if r.status is status)


@dataclass(frozen=True)
class _Parsed(Candidate[EnvelopeFields]):
    """A message that passed the boundary: the candidate the decision takes (envelope, intent hash, signature
    part), with what the append needs (canonical payload JSON and the payload as the event class dumps it)."""

    message: IntakeMessage = field(kw_only=True)
    payload_json: str = field(kw_only=True)
    payload: dict[str, Any] = field(kw_only=True)


def parse(msg: IntakeMessage, types: EventRegistry, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> _Parsed:
    """Decode the envelope and validate its payload against the registered event class, in one pass over
    the bytes (``decode_intake``); raises DecodeError or InvalidEventError naming what is wrong."""
    value = msg.value
    if value is not None:
        check_size(len(value), max_event_bytes, "the intake message", "EVENTSTORE_MAX_EVENT_BYTES")
    env, raw_payload = decode_intake(value)
    check_stream(env.stream)
    check_key(msg.key, env.stream)
    # The fast decoder takes no value with a surrogate escape: only decode()'s envelopes need the scan.
    odd = not isinstance(env, IntakeEnvelope) and value is not None and may_hold_surrogates(value)
    if odd:
        strings = [env.idempotency_key, env.stream, env.agent_id, env.type]
        check_values("the envelope", strings + ([env.lease.resource] if env.lease else []))
    check_timestamp("occurred_at", env.occurred_at)
    cls, payload = types.decode_payload(env.type, env.schema_version, raw_payload)
    if cls.server_only:
        raise InvalidEventError(f"{env.type} events are written by the server only; agents cannot emit them")
    # JSON carries a NUL inside a string only as the escape \u0000 (a raw control character is refused by
    # the parser), so the walk over the payload is needed only when the bytes hold that escape.
    if value is not None and b"\\" in value and b"\\u0000" in value:  # memchr first: most values hold no escape
        check_no_nul(env.type, payload)
    payload_json = canonical_json(payload)
    if odd or may_hold_non_finite(payload_json):
        check_values(env.type, payload)
    # The fast decoder read the auth member and checked its form: the signed part is cut without the regex.
    auth = env.auth if isinstance(env, IntakeEnvelope) else None
    signed = split_signed(value) if auth is None or value is None else split_signed_as(value, auth.key_id, auth.mac)
    parsed: _Parsed = _new(_Parsed)  # a frozen dataclass's __init__ costs a setattr per field; same object
    parsed.__dict__.update(envelope=env, intent=intent_hash(env.type, env.schema_version, env.stream, payload_json),
                           signed=signed, message=msg, payload_json=payload_json, payload=payload)
    return parsed


def read_message(msg: IntakeMessage, types: EventRegistry, *,
                 max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> _Parsed | str:
    """The per-message boundary: a candidate, or the reason to dead-letter the message. Whatever the
    bytes make the code raise (a bug included: AttributeError, RecursionError, OverflowError, ...)
    becomes a dead letter naming the exception, with the traceback in the log; it never stops the
    projector, which would die again on the same offset after every restart."""
    try:
        return parse(msg, types, max_event_bytes=max_event_bytes)
    except (DecodeError, InvalidEventError) as e:
        return safe_reason(str(e))
    except Exception as e:
        log.exception("unexpected error reading intake message at partition %d offset %d; dead-lettering it",
                      msg.partition, msg.offset)
        try:
            text = str(e)
        except Exception:
            text = "(the error cannot be shown)"
        return safe_reason(f"unexpected {type(e).__name__} while reading the message: {text}")


def safe_reason(text: str) -> str:
    """A reason PostgreSQL can store and a terminal can show: control characters and lone surrogates
    escaped, at most MAX_REASON characters."""
    text = printable(text).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= MAX_REASON else text[:MAX_REASON] + "..."


def write_batch(
    conn: psycopg.Connection[Any],
    *,
    group: str,
    topic: str,
    messages: Sequence[IntakeMessage],
    models: Sequence[ReadModel],
    types: EventRegistry,
    poisoned: Mapping[tuple[int, int], str] | None = None,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    watermarks: Mapping[int, tuple[int, int]] | None = None,
    authenticate: bool = True,
) -> BatchResult:
    """Decide and commit one batch; raises TransientStorageError when a retry may succeed,
    PoisonBatchError when one message carries a value the database refuses (split the batch), and
    OffsetsNotTrustedError when the stored offsets disagree with the topic (``watermarks``: the
    partitions' (low, high) offsets, as far as the consumer knows them).

    With ``authenticate`` (the default; off only with EVENTSTORE_AUTH=off, which is unsafe) every event
    must be signed by an active credential of its agent (docs/security.md)."""
    poisoned = poisoned or {}
    result = BatchResult()
    try:
        # Pipeline mode: statements whose results are not read at once (ensure-then-lock pairs, the
        # inserts, read-model writes, offsets, NOTIFY) travel together, so a batch costs a handful of
        # round trips instead of one per statement; results that decide something still sync first.
        with conn.pipeline() as pipe, conn.transaction(), conn.cursor() as cur:
            fresh = _fence(cur, group, topic, messages, result, watermarks or {})
            parsed: list[_Parsed] = []
            rejected: list[tuple[IntakeMessage, str]] = []
            for msg in fresh:
                reason = poisoned.get((msg.partition, msg.offset))
                if reason is None:
                    got = read_message(msg, types, max_event_bytes=max_event_bytes)
                    if isinstance(got, _Parsed):
                        parsed.append(got)
                        continue
                    reason = got
                rejected.append((msg, safe_reason(reason)))
            # Dead-lettered messages are answered to the agent they name only if that agent signed them.
            unparsed = [sv.key_id for m, _ in rejected if (sv := split_signed(m.value)) is not None]
            known = _known(cur, parsed, authenticate, unparsed)
            decisions = decide_batch(parsed, known)
            recorded, texts = _append(cur, parsed, decisions)
            pipe.sync()  # an append error must surface here, not be blamed on a read model below
            result.committed = recorded
            apply_all(cur, models, recorded)
            _record(cur, topic, parsed, decisions, recorded, rejected, result, known, texts)
            _store_offsets(cur, group, topic, fresh, result)
    except ReadModelError as e:
        cause = e.__cause__
        if isinstance(cause, psycopg.Error) and disposition_of(cause) is not Disposition.DEAD_LETTER:
            raise convert(cause) from e  # a lost connection or a full disk is no fault of this event
        raise
    except psycopg.Error as e:  # the table in eventstore.postgres.connection decides, by SQLSTATE
        if disposition_of(e) is Disposition.DEAD_LETTER:
            # A value PostgreSQL cannot store slipped past validation: find the message and dead-letter it.
            raise PoisonBatchError(f"the database refused a value of this batch "
                                   f"(SQLSTATE {e.sqlstate}): {e.diag.message_primary}") from e
        raise convert(e) from e
    return result


def _fence(cur: Cursor, group: str, topic: str, messages: Sequence[IntakeMessage],
           result: BatchResult, watermarks: Mapping[int, tuple[int, int]]) -> list[IntakeMessage]:
    """Lock this batch's offset rows; drop messages another member (or an earlier run) already applied;
    cut a partition at a hole in its offsets (``result.rewind``: the consumer goes back); stop on a
    stored offset the topic contradicts (no silent skip)."""
    parts = sorted({m.partition for m in messages})
    cur.execute(ENSURE_OFFSETS, (group, topic, parts))
    cur.execute(LOCK_OFFSETS, (group, topic, parts))
    stored = {int(p): int(o) for p, o in cur.fetchall()}
    for p in parts:
        low, high = watermarks.get(p, (-1, -1))
        problem = offset_problem(topic, p, stored[p], low, high)
        if problem is not None:
            raise OffsetsNotTrustedError(problem, partition=p, stored=stored[p], ahead=stored[p] > high)
    order = order_batch([(m.partition, m.offset) for m in messages], stored)
    fresh = [messages[i] for i in order.fresh]
    result.behind.update(order.behind)
    result.rewind.update(order.rewind)
    if order.behind:
        log.info("dropped already-applied intake messages of partitions %s (replay or zombie batch)",
                 sorted(order.behind))
    return fresh


def _known(cur: Cursor, candidates: Sequence[Candidate[Any]], authenticate: bool,
           unparsed_key_ids: Sequence[str] = ()) -> KnownState:
    """Load (and lock, in the documented order) what the decision needs. The guard policy is read first
    (the resources to lock depend on it); every other read is queued on its own cursor and travels in
    one pipeline sync, so authentication and guards add no round trip of their own."""
    envs = [c.envelope for c in candidates]
    guards: list[Guard] = []
    guarded: list[str] = []
    if envs:
        cur.execute(GUARDS)
        guards = [Guard(str(p), str(r)) for p, r in cur.fetchall()]
        guarded = sorted({g.resource_for(e.stream) for e in envs if (g := guard_for(e.stream, guards)) is not None})
    key_ids = sorted({c.signed.key_id for c in candidates if c.signed is not None} | set(unparsed_key_ids))
    leased = sorted({e.lease.resource for e in envs if e.lease is not None})
    conn = cur.connection
    with conn.cursor() as hold, conn.cursor() as kc, conn.cursor() as ac, conn.cursor() as rc, \
            conn.cursor() as ck, conn.cursor() as tk:
        if guarded:
            hold.execute(LOCK_HOLDERS, (guarded,))
        if authenticate and key_ids:
            kc.execute(LOCK_KEYS, (key_ids,))
        versions: dict[str, int] = {}
        if envs:
            ac.execute(LOCK_AGENTS, (sorted({e.agent_id for e in envs}),))
            if leased:
                rc.execute(LOCK_RESOURCES, (leased,))
            binarrays.register(ck)
            ck.execute(COMMITTED_KEYS, (text_array([e.agent_id for e in envs]),
                                        text_array([e.idempotency_key for e in envs])))
            tk.execute(TAKEN_IDS, ([e.event_id for e in envs],))
            versions = eventlog.lock_streams(cur, (e.stream for e in envs))  # its fetch syncs the queue
        holders: dict[str, list[HolderRow]] = defaultdict(list)
        for r, a, m, t, expired in (hold.fetchall() if guarded else []):
            holders[str(r)].append(HolderRow(str(a), str(m), int(t), bool(expired)))
        keys = {k: AgentKey(k, a, bytes(sec), st, None if sp is None else tuple(sp), None if ty is None else tuple(ty))
                for k, a, sec, st, sp, ty in (kc.fetchall() if authenticate and key_ids else [])}
        if not envs:
            return KnownState({}, {}, authenticate=authenticate, keys=keys)
        killed = {a: (r or "no reason given") for a, status, r in ac.fetchall() if status == "killed"}
        tokens = {r: int(t) for r, t in (rc.fetchall() if leased else [])}
        committed: dict[str | tuple[str, str], CommittedKey] = {
            (a, k): CommittedKey(int(p), s, int(v), bytes(h)) for a, k, p, s, v, h in ck.fetchall()}
        taken = {eid: str(a) for eid, a in tk.fetchall()}
    return KnownState(versions, committed, killed, tokens, authenticate=authenticate, keys=keys,
                      taken_ids=taken, guards=guards, holders=dict(holders))


def _append(cur: Cursor, parsed: Sequence[_Parsed],
            decisions: Sequence[Decision]) -> tuple[list[RecordedEvent], list[str]]:
    """Append the committed candidates, column by column straight from their envelopes; returns them as
    recorded, with their event ids' texts."""
    cols = eventlog.Columns()
    versions: dict[str, int] = {}
    committed = Outcome.COMMITTED
    for p, d in zip(parsed, decisions, strict=True):
        if d.status is not committed:
            continue
        e = p.envelope
        if d.version is None:  # decide_batch sets it on every COMMITTED decision
            raise EventStoreError(f"internal error: committed event {e.event_id} has no version")
        versions[e.stream] = d.version
        lease = e.lease
        cols.add(e.event_id, e.stream, d.version, e.type, e.schema_version, p.payload_json, p.payload, e.agent_id,
                 e.idempotency_key, e.correlation_id, e.causation_id, e.occurred_at,
                 None if lease is None else lease.resource, None if lease is None else lease.token, p.intent)
    recorded = eventlog.append_columns(cur, cols)
    eventlog.set_stream_versions(cur, versions)
    return recorded, cols.event_text


def _record(
    cur: Cursor,
    topic: str,
    parsed: Sequence[_Parsed],
    decisions: Sequence[Decision],
    recorded: Sequence[RecordedEvent],
    rejected: Sequence[tuple[IntakeMessage, str]],
    result: BatchResult,
    known: KnownState | None = None,
    texts: Sequence[str] | None = None,
) -> None:
    """Outcomes (table + notifications) and dead letters. With authentication on, a dead-lettered
    message gets an outcome row for the agent it names only if that agent signed it: otherwise anyone
    could write a false REJECTED for another agent's pending event id. ``texts``: the committed events'
    id texts (from the append), printed into their notifications."""
    by_index: dict[int, RecordedEvent] = {}
    text_of: dict[int, str] = {}
    it = iter(recorded)
    it_text = iter(texts if texts is not None else [str(ev.event_id) for ev in recorded])
    for i, d in enumerate(decisions):
        if d.status is Outcome.COMMITTED:
            by_index[i] = next(it)
            text_of[i] = next(it_text)
    rows: list[tuple[Any, ...]] = []
    refused: list[tuple[Any, ...]] = []  # identity refusals, apart from the event ids they claim
    # Rows by (agent, key id of the credential that signed its envelopes; None: not authenticated).
    per_agent: dict[tuple[str, str | None], list[list[Any]]] = defaultdict(list)
    committed, committed_value = Outcome.COMMITTED, Outcome.COMMITTED.value
    results = result.results
    sealing = known is not None and known.authenticate
    for i, (p, d) in enumerate(zip(parsed, decisions, strict=True)):
        e = p.envelope
        signer = p.signed.key_id if sealing and p.signed is not None and d.code not in _NOT_AUTHENTIC else None
        if d.status is committed:
            ev = by_index[i]
            version, position = ev.version, ev.position
            res = _new(EmitResult)  # as EmitResult(...) without the frozen __init__'s setattr per field
            res.__dict__.update(event_id=e.event_id, status=committed, stream=e.stream, version=version,
                                position=position, current_version=version, reason=None, reason_code=None)
            per_agent[e.agent_id, signer].append([text_of[i], committed_value, e.stream, version, position,
                                                  version, None, None])
            results.append(res)
            continue
        # A duplicate points at the original event; a key reuse names the event that owns the key.
        pos: int | None = None
        ver: int | None = None
        if d.duplicate_of is not None:
            pos, ver = by_index[d.duplicate_of].position, by_index[d.duplicate_of].version
        elif d.original is not None:
            pos, ver = d.original.position, d.original.version
        if d.status is not Outcome.DUPLICATE:
            ver = None
        res = EmitResult(e.event_id, d.status, e.stream, ver, pos, d.current_version, d.reason, d.code)
        if d.code in _NOT_AUTHENTIC:  # never under the claimed event id: anyone can name it (migration 0012)
            proven = known is not None and signed_by(p.signed, known.keys) is not None
            if proven:  # the rejections topic names the claimed agent and id: only for its own key's envelope
                result.rejections.extend(_rejection(e, d))
            refused.append((e.event_id, e.agent_id, None if p.signed is None else p.signed.key_id, proven,
                            d.code.value if d.code is not None else "", d.reason or "", e.idempotency_key,
                            e.stream, e.expected_version, d.current_version, p.message.partition,
                            p.message.offset))
        else:
            result.rejections.extend(_rejection(e, d))
            rows.append((e.event_id, e.agent_id, e.idempotency_key, e.stream, d.status.value,
                         e.expected_version, d.current_version, pos, d.reason or "",
                         p.message.partition, p.message.offset, None if d.code is None else d.code.value))
        per_agent[e.agent_id, signer].append(res.to_wire())
        results.append(res)
    for msg, reason in rejected:
        result.dead_letters.append(DeadLetter(msg, reason))
        ids = salvage_ids(msg.value)
        signed = split_signed(msg.value)
        signer = signed.key_id if sealing and signed is not None else None
        if ids is not None and known is not None and known.authenticate \
                and signature_problem(ids[1], signed, known.keys) is not None:
            ids = None  # not signed by the agent it names: dead-lettered, but nobody is told
        if ids is not None:
            event_id, agent_id, key = ids
            res = EmitResult(event_id, Outcome.REJECTED, None, None, None, None, reason, ReasonCode.INVALID)
            result.rejections.append(EventRejected(event_id=event_id, agent_id=agent_id, stream=None,
                                                   reason=reason))
            rows.append((event_id, agent_id, key, None, "rejected", None, None, None, reason,
                         msg.partition, msg.offset, ReasonCode.INVALID.value))
            per_agent[agent_id, signer].append(res.to_wire())
            results.append(res)
    if rows:
        cur.execute(INSERT_OUTCOMES, tuple(list(col) for col in zip(*rows, strict=True)))
    if refused:
        cur.execute(INSERT_IDENTITY_REFUSALS, tuple(list(col) for col in zip(*refused, strict=True)))
    if result.dead_letters:
        dl = result.dead_letters
        cur.execute(INSERT_DEAD_LETTERS, (
            topic, [d.message.partition for d in dl], [d.message.offset for d in dl],
            [d.message.key for d in dl], [d.message.value for d in dl], [d.reason for d in dl],
        ))
    channels: list[str] = []
    payloads: list[str] = []
    if recorded:  # wakes the committed-topic publisher
        channels.append(COMMITTED_CHANNEL)
        payloads.append(str(recorded[-1].position))
    for (agent_id, key_id), wire_rows in per_agent.items():
        for chunk in pack_rows(wire_rows, _seal_for(agent_id, key_id, known)):
            channels.append(channel_for(agent_id))
            payloads.append(chunk)
    if channels:
        cur.execute(NOTIFY, (channels, payloads))


# Refusals of an envelope's identity: its signature did not pass, so its agent's key may not vouch for it.
_NOT_AUTHENTIC = frozenset((ReasonCode.BAD_SIGNATURE, ReasonCode.UNKNOWN_AGENT, ReasonCode.CREDENTIAL_REVOKED))


def _seal_for(agent_id: str, key_id: str | None, known: KnownState | None) -> OutcomeSeal | None:
    """The seal for an agent's rows decided on envelopes that passed authentication with credential
    ``key_id`` (docs/security.md, "Forged notifications and sealed outcomes"); None (a wake-up only) otherwise."""
    key = None if key_id is None or known is None else known.keys.get(key_id)
    if key is None or key.agent_id != agent_id or key.status != "active":
        return None
    return OutcomeSeal(agent_id, Credential(key.key_id, key.secret))


def _rejection(e: EnvelopeFields, d: Decision) -> list[Event]:
    if d.status is Outcome.CONFLICT and d.current_version is not None and e.expected_version is not None:
        return [EventConflicted(event_id=e.event_id, agent_id=e.agent_id, stream=e.stream,
                                idempotency_key=e.idempotency_key, expected_version=e.expected_version,
                                actual_version=d.current_version)]
    if d.status is Outcome.REJECTED and d.original is not None:
        return [IdempotencyKeyReused(event_id=e.event_id, agent_id=e.agent_id, stream=e.stream,
                                     idempotency_key=e.idempotency_key, original_position=d.original.position)]
    if d.status is Outcome.REJECTED:
        return [EventRejected(event_id=e.event_id, agent_id=e.agent_id, stream=e.stream, reason=d.reason or "")]
    return []


def _store_offsets(cur: Cursor, group: str, topic: str, fresh: Sequence[IntakeMessage],
                   result: BatchResult) -> None:
    nxt: dict[int, int] = {}
    for m in fresh:
        nxt[m.partition] = max(nxt.get(m.partition, 0), m.offset + 1)
    if nxt:
        parts = sorted(nxt)
        cur.execute(STORE_OFFSETS, (parts, [nxt[p] for p in parts], group, topic))
    result.next_offsets = nxt


def dead_letter_headers(d: DeadLetter, topic: str) -> Headers:
    return [
        ("es-dead-letter-reason", d.reason.encode()[:4000]),
        ("es-source", json.dumps({"topic": topic, "partition": d.message.partition,
                                  "offset": d.message.offset}).encode()),
    ]
