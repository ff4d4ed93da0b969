"""Coordination of agents over shared resources: durable leases with TTL and fencing tokens, a global
lock order, deadlock detection with alerts, a kill switch, and contention metrics (promise 7)."""

from eventstore.coordination.acquisition import VICTIM_RULE, Lease
from eventstore.coordination.aio import AsyncCoordinator
from eventstore.coordination.coordinator import Coordinator
from eventstore.coordination.metrics import LeaseMetrics, Snapshot, Stats
from eventstore.core import lockevents as events
from eventstore.core.lockrules import Mode

__all__ = [
    "VICTIM_RULE",
    "AsyncCoordinator",
    "Coordinator",
    "Lease",
    "LeaseMetrics",
    "Mode",
    "Snapshot",
    "Stats",
    "events",
]
