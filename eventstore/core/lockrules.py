"""The coordinator's pure decisions: compatibility and FCFS, lock order, wait-for cycles, victims,
wait-exceeded, backoff. No I/O, no clocks: the adapter feeds in what the database said.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class Mode(StrEnum):
    """Exclusive (write) or shared (read) lease."""

    EXCLUSIVE = "exclusive"
    SHARED = "shared"


def compatible(a: Mode, b: Mode) -> bool:
    """Two leases may be held at once only if both are shared."""
    return a is Mode.SHARED and b is Mode.SHARED


@dataclass(frozen=True)
class Holder:
    """A current holder of a resource, as read from ``lease_holders``."""

    resource: str
    agent_id: str
    mode: Mode


@dataclass(frozen=True)
class Waiter:
    """A queued request, as read from ``lease_waiters``; ``seq`` gives first come, first served."""

    resource: str
    agent_id: str
    mode: Mode
    seq: int
    enqueued_at: datetime


def may_grant(agent_id: str, mode: Mode, holders: Sequence[Holder], queue: Sequence[Waiter]) -> bool:
    """Whether ``agent_id`` may be granted ``mode`` now.

    Every holder (other than the agent itself) must be compatible, and so must every waiter queued
    ahead of it (all of the queue if it is not queued yet). Because a queued writer blocks every shared
    request behind it, a stream of readers cannot starve a writer: FCFS among incompatible requests.
    """
    if any(h.agent_id != agent_id and not compatible(mode, h.mode) for h in holders):
        return False
    for w in sorted(queue, key=lambda w: w.seq):
        if w.agent_id == agent_id:
            return True
        if not compatible(mode, w.mode):
            return False
    return True


OrderKey = Callable[[str], Any]


def default_rank(resource: str) -> str:
    """The default global order: resource ids sorted as strings."""
    return resource


def order_key(resource: str, rank: OrderKey = default_rank) -> tuple[Any, str]:
    """The position of a resource in the global order; the id breaks ties between equal ranks."""
    return (rank(resource), resource)


def order_violation(requested: str, held: Iterable[str], rank: OrderKey = default_rank) -> str | None:
    """The held resource that comes after ``requested`` in the global order (the latest such), or None.

    Re-entering a resource already held is never a violation.
    """
    held = [h for h in held if h != requested]
    if not held:
        return None
    latest = max(held, key=lambda h: order_key(h, rank))
    return latest if order_key(requested, rank) < order_key(latest, rank) else None


def sort_resources(resources: Iterable[str], rank: OrderKey = default_rank) -> list[str]:
    """Distinct resources in the global lock order, as ``lease_many`` takes them."""
    return sorted(set(resources), key=lambda r: order_key(r, rank))


def wait_for_edges(holders: Sequence[Holder], waiters: Sequence[Waiter]) -> dict[str, set[str]]:
    """The wait-for graph agent -> agents it waits for.

    A waiter waits for every incompatible holder of its resource and, because the queue is FCFS, for
    every incompatible waiter queued ahead of it on that resource.
    """
    edges: dict[str, set[str]] = {}
    by_resource: dict[str, list[Waiter]] = {}
    for w in waiters:
        by_resource.setdefault(w.resource, []).append(w)
    for resource, queue in by_resource.items():
        queue.sort(key=lambda w: w.seq)
        for i, w in enumerate(queue):
            out = edges.setdefault(w.agent_id, set())
            for h in holders:
                if h.resource == resource and h.agent_id != w.agent_id and not compatible(w.mode, h.mode):
                    out.add(h.agent_id)
            for ahead in queue[:i]:
                if ahead.agent_id != w.agent_id and not compatible(w.mode, ahead.mode):
                    out.add(ahead.agent_id)
    return edges


def find_cycle(edges: Mapping[str, Iterable[str]], start: str) -> list[str] | None:
    """A cycle of the wait-for graph through ``start`` (as the list of agents along it), or None.

    Depth-first search from ``start``; neighbours are visited in sorted order so every caller finds
    the same cycle for the same graph.
    """
    path: list[str] = [start]
    on_path = {start}
    visited: set[str] = set()
    iters = [iter(sorted(edges.get(start, ())))]
    while iters:
        nxt = next(iters[-1], None)
        if nxt is None:
            iters.pop()
            on_path.discard(path.pop())
            continue
        if nxt == start:
            return list(path)
        if nxt in on_path or nxt in visited:
            continue
        visited.add(nxt)
        path.append(nxt)
        on_path.add(nxt)
        iters.append(iter(sorted(edges.get(nxt, ()))))
    return None


def all_cycles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One cycle per agent that lies on a cycle (deduplicated by member set); used by operators' views."""
    seen: set[frozenset[str]] = set()
    found: list[list[str]] = []
    for node in sorted(edges):
        cyc = find_cycle(edges, node)
        if cyc is not None and frozenset(cyc) not in seen:
            seen.add(frozenset(cyc))
            found.append(cyc)
    return found


def choose_victim(cycle: Sequence[str], waiting_since: Mapping[str, datetime]) -> str:
    """The documented victim rule: the youngest waiter of the cycle (latest enqueued_at on the database
    clock) is aborted, since it has waited (and usually done) the least; ties go to the greatest agent id.

    Every member computes the same victim from the same rows, so only one of them aborts.
    """
    members = [a for a in cycle if a in waiting_since]
    if not members:
        raise ValueError("a wait-for cycle must contain at least one waiter")
    return max(members, key=lambda a: (waiting_since[a], a))


def wait_exceeded(waited_seconds: float, expected_seconds: float | None, already_alerted: bool) -> bool:
    """Whether to raise the wait-exceeded alert: waited more than twice the declared expected duration,
    and not alerted yet for this wait."""
    if expected_seconds is None or already_alerted:
        return False
    return waited_seconds > 2.0 * expected_seconds


def backoff(attempt: int, *, base: float = 0.005, cap: float = 0.1, jitter: float = 0.5,
            rand: Callable[[], float] = random.random) -> float:
    """Seconds to sleep before poll number ``attempt`` (0-based): exponential from ``base`` up to ``cap``,
    with up to ``jitter`` of it randomised so that waiters do not poll in lockstep."""
    delay: float = min(cap, base * 2.0 ** min(attempt, 30))
    return delay * (1.0 - jitter + jitter * rand())


def key_of(resource: str) -> int:
    """A stable signed 32-bit key for ``pg_advisory_xact_lock(namespace, key)`` from a resource id.

    Collisions only serialise two resources' coordinator transactions; they never merge leases.
    """
    h = zlib.crc32(resource.encode())
    return h - (1 << 32) if h >= (1 << 31) else h
