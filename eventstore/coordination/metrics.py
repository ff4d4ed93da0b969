"""Contention metrics of one coordinator process, per resource and agent.

Kept twice on purpose: prometheus-client collectors on a private registry (so two coordinators in one
process, e.g. in tests, never clash in the global registry) for ``render()``, and plain counters for
``snapshot()`` that Python callers read without parsing the exposition format.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass
class Stats:
    """Totals for one (resource, agent) pair."""

    grants: int = 0
    waits: int = 0
    wait_seconds_total: float = 0.0
    wait_seconds_max: float = 0.0
    hold_seconds_total: float = 0.0
    releases: int = 0
    denials: int = 0
    expiries_while_held: int = 0
    revocations: int = 0
    deadlocks: int = 0
    wait_exceeded: int = 0
    order_violations: int = 0


@dataclass
class Snapshot:
    """A copy of the counters: per (resource, agent), and fence rejections per agent."""

    by_pair: dict[tuple[str, str], Stats] = field(default_factory=dict)
    fence_rejections: dict[str, int] = field(default_factory=dict)

    def for_resource(self, resource: str) -> Stats:
        """Totals over all agents of one resource."""
        return _sum(s for (r, _), s in self.by_pair.items() if r == resource)

    def for_agent(self, agent_id: str) -> Stats:
        """Totals over all resources of one agent."""
        return _sum(s for (_, a), s in self.by_pair.items() if a == agent_id)


def _sum(items: Iterable[Stats]) -> Stats:
    total = Stats()
    for s in items:
        for name in Stats.__dataclass_fields__:
            cur = getattr(total, name)
            val = getattr(s, name)
            setattr(total, name, max(cur, val) if name == "wait_seconds_max" else cur + val)
    return total


class LeaseMetrics:
    """Thread-safe recorder of lease outcomes; the coordinator calls one method per outcome."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("resource", "agent")
        self._wait = Histogram("eventstore_lease_wait_seconds", "Time from request to grant (queued)",
                               labels, buckets=_BUCKETS, registry=self.registry)
        self._hold = Histogram("eventstore_lease_hold_seconds", "Time from grant to release",
                               labels, buckets=_BUCKETS, registry=self.registry)
        self._grants = Counter("eventstore_lease_grants", "Leases granted", labels, registry=self.registry)
        self._waits = Counter("eventstore_lease_waits", "Requests that had to queue", labels,
                              registry=self.registry)
        self._denials = Counter("eventstore_lease_denials", "Requests refused (busy or wait ran out)",
                                labels, registry=self.registry)
        self._expiries = Counter("eventstore_lease_expiries", "Leases that expired while held",
                                 labels, registry=self.registry)
        self._revocations = Counter("eventstore_lease_revocations", "Leases revoked by the kill switch",
                                    labels, registry=self.registry)
        self._deadlocks = Counter("eventstore_lease_deadlock_victims", "Waiters aborted as deadlock victims",
                                  labels, registry=self.registry)
        self._exceeded = Counter("eventstore_lease_wait_exceeded", "Waits longer than 2x expected duration",
                                 labels, registry=self.registry)
        self._order = Counter("eventstore_lease_order_violations", "Requests out of the global lock order",
                              labels, registry=self.registry)
        self._fence = Gauge("eventstore_fence_rejections", "Events refused for a stale lease token",
                            ("agent",), registry=self.registry)
        self._lock = threading.Lock()
        self._stats: dict[tuple[str, str], Stats] = defaultdict(Stats)
        self._fence_counts: dict[str, int] = {}

    def granted(self, resource: str, agent: str, waited: float, queued: bool) -> None:
        self._grants.labels(resource, agent).inc()
        with self._lock:
            s = self._stats[(resource, agent)]
            s.grants += 1
            if queued:
                s.wait_seconds_total += waited
                s.wait_seconds_max = max(s.wait_seconds_max, waited)
        if queued:
            self._wait.labels(resource, agent).observe(waited)

    def waited(self, resource: str, agent: str) -> None:
        self._waits.labels(resource, agent).inc()
        with self._lock:
            self._stats[(resource, agent)].waits += 1

    def released(self, resource: str, agent: str, held: float) -> None:
        self._hold.labels(resource, agent).observe(held)
        with self._lock:
            s = self._stats[(resource, agent)]
            s.releases += 1
            s.hold_seconds_total += held

    def _bump(self, counter: Counter, attr: str, resource: str, agent: str) -> None:
        counter.labels(resource, agent).inc()
        with self._lock:
            s = self._stats[(resource, agent)]
            setattr(s, attr, getattr(s, attr) + 1)

    def denied(self, resource: str, agent: str) -> None:
        self._bump(self._denials, "denials", resource, agent)

    def expired(self, resource: str, agent: str) -> None:
        self._bump(self._expiries, "expiries_while_held", resource, agent)

    def revoked(self, resource: str, agent: str) -> None:
        self._bump(self._revocations, "revocations", resource, agent)

    def deadlock_victim(self, resource: str, agent: str) -> None:
        self._bump(self._deadlocks, "deadlocks", resource, agent)

    def wait_exceeded(self, resource: str, agent: str) -> None:
        self._bump(self._exceeded, "wait_exceeded", resource, agent)

    def order_violation(self, resource: str, agent: str) -> None:
        self._bump(self._order, "order_violations", resource, agent)

    def set_fence_rejections(self, per_agent: dict[str, int]) -> None:
        """Store fence rejections counted from the projector's outcomes."""
        with self._lock:
            self._fence_counts = dict(per_agent)
        for agent, n in per_agent.items():
            self._fence.labels(agent).set(n)

    def snapshot(self) -> Snapshot:
        """A consistent copy of the counters."""
        with self._lock:
            return Snapshot(
                by_pair={k: Stats(**vars(v)) for k, v in self._stats.items()},
                fence_rejections=dict(self._fence_counts),
            )

    def render(self) -> bytes:
        """The Prometheus text exposition of this coordinator's metrics."""
        return generate_latest(self.registry)
