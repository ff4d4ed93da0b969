"""Recording a batch's decisions inside its transaction: outcome rows, identity refusals (apart from the event
ids they claim, migration 0012), dead letters, and the NOTIFYs (the committed channel that wakes the publisher
and woken subscribers, and each agent's outcomes, sealed when its envelopes passed authentication)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from eventstore.core.auth import Credential, signed_by, split_signed
from eventstore.core.auth import authenticate as signature_problem
from eventstore.core.decisions import Decision, KnownState
from eventstore.core.events import Event
from eventstore.core.outcomes import EmitResult, Outcome, ReasonCode
from eventstore.core.records import EnvelopeFields, RecordedEvent
from eventstore.postgres.eventlog import Cursor
from eventstore.postgres.intakebatch import BatchResult, DeadLetter, IntakeMessage, Parsed
from eventstore.postgres.refusals import INSERT_IDENTITY_REFUSALS
from eventstore.wire.envelope import salvage_ids
from eventstore.wire.notifications import COMMITTED_CHANNEL, OutcomeSeal, channel_for, pack_rows
from eventstore.wire.rejections import EventConflicted, EventRejected, IdempotencyKeyReused

_new = object.__new__

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


def record_outcomes(
    cur: Cursor,
    topic: str,
    parsed: Sequence[Parsed],
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
        signer = p.signed.key_id if sealing and p.signed is not None and d.code not in NOT_AUTHENTIC else None
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
        if d.code in NOT_AUTHENTIC:  # never under the claimed event id: anyone can name it (migration 0012)
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
NOT_AUTHENTIC = frozenset((ReasonCode.BAD_SIGNATURE, ReasonCode.UNKNOWN_AGENT, ReasonCode.CREDENTIAL_REVOKED))


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
