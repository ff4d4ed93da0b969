"""The projector's pure decision for a batch: authentication and permissions, dedup, kill switch, fencing,
guarded streams, expected-version check.

No I/O here. The adapter loads what the database knows about the batch (committed keys, stream
versions, killed agents, fence tokens), this module decides every message in offset order, and the
adapter writes the result in one transaction.
"""

from __future__ import annotations

import binascii
import hmac
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from eventstore.core.auth import (
    AgentKey,
    Credential,
    Guard,
    HolderRow,
    Signed,
    Signer,
    authenticate,
    check_lease,
    guard_for,
    permitted,
)
from eventstore.core.outcomes import Outcome, ReasonCode
from eventstore.core.records import EnvelopeFields


@dataclass(frozen=True)
class CommittedKey:
    """What the log holds for an idempotency key: the original event and what it stood for."""

    position: int
    stream: str
    version: int
    intent: bytes


E = TypeVar("E", bound=EnvelopeFields)


@dataclass(frozen=True)
class Candidate(Generic[E]):
    """One decoded intake message with its intent hash, in offset order (the envelope of either decoder)."""

    envelope: E
    intent: bytes
    signed: Signed | None = None  # the signed bytes and MAC cut from the intake value (core/auth.py)


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
    # Keyed by (agent id, idempotency key): keys are scoped per agent. A plain key string matches any agent
    # (the form of single-agent tests).
    committed_keys: Mapping[str | tuple[str, str], CommittedKey]
    killed_agents: Mapping[str, str] = field(default_factory=dict)
    fence_tokens: Mapping[str, int] = field(default_factory=dict)
    # Authentication: when ``authenticate`` is set, every envelope must be signed by an active credential
    # of its agent (``keys`` by key id) and stay inside that agent's permissions.
    authenticate: bool = False
    keys: Mapping[str, AgentKey] = field(default_factory=dict)
    # Event ids already in the log, with the agent that owns each (another agent may not reuse them).
    taken_ids: Mapping[uuid.UUID, str] = field(default_factory=dict)
    # Guarded streams and the current lease holders of their resources (expiry by the database clock).
    guards: Sequence[Guard] = ()
    holders: Mapping[str, Sequence[HolderRow]] = field(default_factory=dict)


_URLSAFE = bytes.maketrans(b"+/", b"-_")


class _Verifier:
    """Checks envelope signatures for one batch with each credential's HMAC pads hashed once (a batch
    holds thousands of envelopes of a few agents). Only a signature that passes every check of
    ``auth.authenticate`` takes this path; anything else goes to ``authenticate`` for its reason."""

    __slots__ = ("_keys", "_signers")

    def __init__(self, keys: Mapping[str, AgentKey]) -> None:
        self._keys = keys
        self._signers: dict[str, Signer] = {}

    def valid(self, agent_id: str, signed: Signed | None) -> bool:
        """True when ``authenticate(agent_id, signed, keys)`` would return None."""
        if signed is None:
            return False
        key = self._keys.get(signed.key_id)
        if key is None or key.agent_id != agent_id or key.status != "active":
            return False
        signer = self._signers.get(key.key_id)
        if signer is None:
            signer = self._signers[key.key_id] = Signer(Credential(key.key_id, key.secret))
        tag = binascii.b2a_base64(signer.mac(signed.body), newline=False)[:43].translate(_URLSAFE)
        return hmac.compare_digest(tag, signed.mac.encode())


def decide_batch(candidates: Sequence[Candidate[Any]], known: KnownState) -> list[Decision]:
    """Decide each candidate in order; earlier decisions in the batch count for later ones."""
    versions: dict[str, int] = dict(known.stream_versions)
    keys: dict[tuple[str, str], tuple[int, Candidate[Any]]] = {}  # keys committed earlier in this batch
    decisions: list[Decision] = []
    verifier = _Verifier(known.keys) if known.authenticate else None
    for i, cand in enumerate(candidates):
        env = cand.envelope
        current = versions.get(env.stream, 0)
        refusal = _refuse(cand, known, verifier)
        if refusal is not None:
            decision = Decision(Outcome.REJECTED, current_version=current, code=refusal[0], reason=refusal[1])
        else:
            decision = _decide_one(env, cand.intent, current, known, keys)
            if decision.status in (Outcome.COMMITTED, Outcome.CONFLICT):
                guarded = _guarded(env, known)
                if guarded is not None:
                    decision = Decision(Outcome.REJECTED, current_version=current, code=guarded[0],
                                        reason=guarded[1])
        if decision.status is Outcome.COMMITTED:
            versions[env.stream] = current + 1
            decision.version = current + 1
            keys[(env.agent_id, env.idempotency_key)] = (i, cand)
        decisions.append(decision)
    return decisions


def _refuse(cand: Candidate[Any], known: KnownState,
            verifier: _Verifier | None = None) -> tuple[ReasonCode, str] | None:
    """Identity, permission and event-id checks, before anything about keys is revealed."""
    env = cand.envelope
    if known.authenticate:
        if verifier is None or not verifier.valid(env.agent_id, cand.signed):
            problem = authenticate(env.agent_id, cand.signed, known.keys)
            if problem is not None:
                return problem
        if cand.signed is not None:
            problem = permitted(known.keys[cand.signed.key_id], env.stream, env.type)
            if problem is not None:
                return problem
    owner = known.taken_ids.get(env.event_id)
    if owner is not None and owner != env.agent_id:
        return (ReasonCode.EVENT_ID_TAKEN, f"event id {env.event_id} belongs to another agent's event; "
                                           "use a fresh event id")
    return None


def _guarded(env: EnvelopeFields, known: KnownState) -> tuple[ReasonCode, str] | None:
    """On a guarded stream, a write needs the agent's current exclusive lease (checked after dedup, so a
    retry of a committed event still gets DUPLICATE after the lease is gone)."""
    guard = guard_for(env.stream, known.guards)
    if guard is not None:
        return check_lease(env.agent_id, env.stream, guard, env.lease.resource if env.lease else None,
                           env.lease.token if env.lease else None, known.holders)
    return None


def _decide_one(
    env: EnvelopeFields,
    intent: bytes,
    current: int,
    known: KnownState,
    batch_keys: Mapping[tuple[str, str], tuple[int, Candidate[Any]]],
) -> Decision:
    key = env.idempotency_key
    original = known.committed_keys.get((env.agent_id, key)) or known.committed_keys.get(key)
    if original is not None:
        if original.intent == intent:
            return Decision(Outcome.DUPLICATE, version=original.version, original=original, code=ReasonCode.DUPLICATE,
                            reason=f"idempotency key {key!r} was already committed at position {original.position}")
        return Decision(Outcome.REJECTED, original=original, reason=_reuse_reason(key, original.stream),
                        code=ReasonCode.KEY_REUSED)
    in_batch = batch_keys.get((env.agent_id, key))
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
