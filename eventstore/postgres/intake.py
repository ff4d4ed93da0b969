"""One intake batch, one PostgreSQL transaction (promises 1, 2, 5).

Order inside the transaction: lock and check the stored offsets (fences a zombie projector whose
partitions moved to another member) -> load what the log knows -> decide (pure) -> append ->
apply read models -> record the other outcomes and dead letters -> store the offsets -> notify the
agents. Either all of it commits or none of it, so a crash anywhere replays the batch from the stored
offsets and the decisions come out the same.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from eventstore.core.auth import (
    AgentKey,
    Guard,
    HolderRow,
    guard_for,
    split_signed,
    split_signed_as,
)
from eventstore.core.decisions import Candidate, CommittedKey, Decision, KnownState, decide_batch
from eventstore.core.errors import (
    DecodeError,
    EventStoreError,
    InvalidEventError,
    OffsetsNotTrustedError,
)
from eventstore.core.events import EventRegistry
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
from eventstore.core.outcomes import Outcome
from eventstore.core.records import RecordedEvent
from eventstore.core.validation import check_no_nul, check_stream, printable
from eventstore.postgres import binarrays, eventlog
from eventstore.postgres.binarrays import text_array
from eventstore.postgres.connection import Disposition, convert, disposition_of
from eventstore.postgres.intakebatch import BatchResult, IntakeMessage, Parsed
from eventstore.postgres.offsets import ENSURE_OFFSETS, LOCK_OFFSETS, STORE_OFFSETS
from eventstore.postgres.outcomerecord import record_outcomes
from eventstore.postgres.readmodels import ReadModel, ReadModelError, apply_all
from eventstore.wire.envelope import IntakeEnvelope, decode_intake

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
MAX_REASON = 2000


class PoisonBatchError(EventStoreError):
    """Some message of the batch cannot be stored; the projector splits the batch to dead-letter it."""


def parse(msg: IntakeMessage, types: EventRegistry, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> Parsed:
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
    parsed: Parsed = _new(Parsed)  # a frozen dataclass's __init__ costs a setattr per field; same object
    parsed.__dict__.update(envelope=env, intent=intent_hash(env.type, env.schema_version, env.stream, payload_json),
                           signed=signed, message=msg, payload_json=payload_json, payload=payload)
    return parsed


def read_message(msg: IntakeMessage, types: EventRegistry, *,
                 max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> Parsed | str:
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
            parsed: list[Parsed] = []
            rejected: list[tuple[IntakeMessage, str]] = []
            for msg in fresh:
                reason = poisoned.get((msg.partition, msg.offset))
                if reason is None:
                    got = read_message(msg, types, max_event_bytes=max_event_bytes)
                    if isinstance(got, Parsed):
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
            record_outcomes(cur, topic, parsed, decisions, recorded, rejected, result, known, texts)
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


def _append(cur: Cursor, parsed: Sequence[Parsed],
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


def _store_offsets(cur: Cursor, group: str, topic: str, fresh: Sequence[IntakeMessage],
                   result: BatchResult) -> None:
    nxt: dict[int, int] = {}
    for m in fresh:
        nxt[m.partition] = max(nxt.get(m.partition, 0), m.offset + 1)
    if nxt:
        parts = sorted(nxt)
        cur.execute(STORE_OFFSETS, (parts, [nxt[p] for p in parts], group, topic))
    result.next_offsets = nxt
