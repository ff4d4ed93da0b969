"""The projector's pure decision for a batch: dedup, kill switch, fencing, expected-version check.

No I/O here. The adapter loads what the database knows about the batch (committed keys, stream
versions, killed agents, fence tokens), this module decides every message in offset order, and the
adapter writes the result in one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from eventstore.core.outcomes import Outcome, ReasonCode
from eventstore.core.records import Envelope


@dataclass(frozen=True)
class CommittedKey:
    """What the log holds for an idempotency key: the original event and what it stood for."""

    position: int
    stream: str
    version: int
    intent: bytes


@dataclass(frozen=True)
class Candidate:
    """One decoded intake message with its intent hash, in offset order."""

    envelope: Envelope
    intent: bytes


@dataclass
class Decision:
    """The verdict on one candidate. For a duplicate of an event earlier in the same batch,
    ``duplicate_of`` is that candidate's index (its position is known only after the append)."""

    status: Outcome
    version: int | None = None
    current_version: int | None = None
    original: CommittedKey | None = None
    duplicate_of: int | None = None
    reason: str | None = None
    code: ReasonCode | None = None


@dataclass(frozen=True)
class KnownState:
    """What the database knows about the streams, keys, agents and resources of a batch."""

    stream_versions: Mapping[str, int]
    committed_keys: Mapping[str, CommittedKey]
    killed_agents: Mapping[str, str] = field(default_factory=dict)
    fence_tokens: Mapping[str, int] = field(default_factory=dict)


def decide_batch(candidates: Sequence[Candidate], known: KnownState) -> list[Decision]:
    """Decide each candidate in order; earlier decisions in the batch count for later ones."""
    versions: dict[str, int] = dict(known.stream_versions)
    keys: dict[str, tuple[int, Candidate]] = {}  # keys committed earlier in this batch
    decisions: list[Decision] = []
    for i, cand in enumerate(candidates):
        env = cand.envelope
        current = versions.get(env.stream, 0)
        decision = _decide_one(env, cand.intent, current, known, keys)
        if decision.status is Outcome.COMMITTED:
            versions[env.stream] = current + 1
            decision.version = current + 1
            keys[env.idempotency_key] = (i, cand)
        decisions.append(decision)
    return decisions


def _decide_one(
    env: Envelope,
    intent: bytes,
    current: int,
    known: KnownState,
    batch_keys: Mapping[str, tuple[int, Candidate]],
) -> Decision:
    key = env.idempotency_key
    original = known.committed_keys.get(key)
    if original is not None:
        if original.intent == intent:
            return Decision(Outcome.DUPLICATE, version=original.version, original=original, code=ReasonCode.DUPLICATE,
                            reason=f"idempotency key {key!r} was already committed at position {original.position}")
        return Decision(Outcome.REJECTED, original=original, reason=_reuse_reason(key, original.stream),
                        code=ReasonCode.KEY_REUSED)
    in_batch = batch_keys.get(key)
    if in_batch is not None:
        index, first = in_batch
        if first.intent == intent:
            return Decision(Outcome.DUPLICATE, duplicate_of=index, code=ReasonCode.DUPLICATE,
                            reason=f"idempotency key {key!r} was already committed")
        return Decision(Outcome.REJECTED, reason=_reuse_reason(key, first.envelope.stream), code=ReasonCode.KEY_REUSED)
    if env.agent_id in known.killed_agents:
        return Decision(Outcome.REJECTED, current_version=current, code=ReasonCode.AGENT_KILLED,
                        reason=f"agent {env.agent_id!r} was stopped by the kill switch "
                               f"({known.killed_agents[env.agent_id]}); an operator must revive it")
    if env.lease is not None:
        newest = known.fence_tokens.get(env.lease.resource)
        if newest is None or env.lease.token > newest:
            return Decision(Outcome.REJECTED, current_version=current, code=ReasonCode.LEASE_UNKNOWN,
                            reason=f"lease token {env.lease.token} on {env.lease.resource!r} was never granted")
        if env.lease.token < newest:
            return Decision(Outcome.REJECTED, current_version=current, code=ReasonCode.LEASE_STALE,
                            reason=f"stale lease on {env.lease.resource!r}: token {env.lease.token} is older than "
                                   f"the newest grant {newest}; the lease expired or was revoked")
    if env.expected_version is not None and env.expected_version != current:
        return Decision(Outcome.CONFLICT, current_version=current, code=ReasonCode.VERSION_CONFLICT,
                        reason=f"expected version {env.expected_version} of stream {env.stream!r}, "
                               f"but it is at {current}; re-read and retry")
    return Decision(Outcome.COMMITTED, current_version=current)


def _reuse_reason(key: str, stream: str) -> str:
    return (f"idempotency key {key!r} was already used for a different event (stream {stream!r}); "
            "use a new key for a new intent")
