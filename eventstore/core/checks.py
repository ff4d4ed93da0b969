"""The readiness check's rules (pure): one line per control of the founding document's production
checklist, each decided from evidence gathered from the live deployment (eventstore/postgres/evidence.py).

The rules only compare numbers with thresholds from Settings; they never assume a control is in place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from eventstore.core.lockrules import order_violation
from eventstore.core.settings import Settings

LockRow = tuple[str, str, str, int]  # (event type, agent id, resource, token), in log order


@dataclass(frozen=True)
class CheckLine:
    control: str
    ok: bool
    detail: str

    def render(self) -> str:
        return f"{'✓' if self.ok else '✗'} {self.control}: {self.detail}"


@dataclass
class Evidence:
    """What the deployment shows, gathered by SQL (and a Kafka look-up where needed)."""

    resources: int = 0
    writer_agents: int = 0
    models_checked: list[str] = field(default_factory=list)
    model_rows: int = 0
    model_mismatches: list[str] = field(default_factory=list)  # "inventory sku-1: 5 in the table, log says 4"
    lease_grants: int = 0
    default_ttl: float | None = None  # the most common TTL granted
    max_ttl: float | None = None
    guarded_patterns: int | None = None  # None: the deployment has no guard table
    order_refused: int = 0
    order_let_through: int = 0
    unkeyed_by_agent: dict[str, int] = field(default_factory=dict)
    publishers: dict[str, int] = field(default_factory=dict)  # checkpoint name -> events behind the head
    publisher_lag_seconds: float | None = None  # age of the oldest unpublished event
    alert_sink: str | None = None
    deadlocks_found: int = 0
    waits_exceeded: int = 0
    kill_switch_reachable: bool = False
    killed_agents: list[str] = field(default_factory=list)
    killed_holding: list[str] = field(default_factory=list)  # killed agents that still hold leases
    chain_ok: bool = False
    chain_checked: int = 0
    chain_problem: str | None = None
    chain_bad_position: int | None = None
    head: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lock_order_let_through(rows: Iterable[LockRow]) -> int:
    """Grants made while the same agent held a resource that comes later in the global order (the
    coordinator's default order, resource ids), replayed from the lock history in position order.
    The same rule the coordinator enforces (lockrules.order_violation), applied after the fact."""
    held: dict[str, dict[str, int]] = {}
    count = 0
    for kind, agent, resource, token in rows:
        mine = held.setdefault(agent, {})
        if kind == "LeaseGranted":
            if order_violation(resource, list(mine)) is not None:
                count += 1
            mine[resource] = token
        elif mine.get(resource) == token:  # released, expired or revoked
            del mine[resource]
    return count


def _n(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.1f}"


def evaluate(e: Evidence, s: Settings) -> list[CheckLine]:
    """The lines of the check, in the founding document's order."""
    lines = [
        CheckLine("Shared resources mapped", e.resources > 0,
                  f"{e.resources} resources, {e.writer_agents} agents with write access" if e.resources
                  else "no writes in the event log yet: nothing is mapped"),
    ]
    if e.model_mismatches:
        detail = f"{len(e.model_mismatches)} read-model rows not explained by the log, e.g. {e.model_mismatches[0]}"
    elif e.models_checked:
        detail = (f"every read-model row is explained by the log ({e.model_rows} rows in "
                  f"{', '.join(e.models_checked)})")
    else:
        detail = "no read model with a known fold to compare"
    lines.append(CheckLine("Writes go through the projector", not e.model_mismatches, detail))
    ttl_ok = e.max_ttl is None or e.max_ttl <= s.check_max_lease_ttl_seconds
    guarded = "n/a (no guard table)" if e.guarded_patterns is None else str(e.guarded_patterns)
    if e.lease_grants == 0:
        ttl_detail = f"no lease granted yet; guarded patterns: {guarded}"
    else:
        ttl_detail = (f"default {_n(e.default_ttl or 0)} s, longest {_n(e.max_ttl or 0)} s over {e.lease_grants} "
                      f"grants, guarded patterns: {guarded}")
        if not ttl_ok:
            ttl_detail += f" (longer than {_n(s.check_max_lease_ttl_seconds)} s is a lock nobody expires)"
    lines.append(CheckLine("Leases with TTL", ttl_ok, ttl_detail))
    lines.append(CheckLine("Global lock order enforced", e.order_let_through == 0,
                           f"{e.order_let_through} violations let through, {e.order_refused} refused"))
    over = {a: n for a, n in e.unkeyed_by_agent.items() if n > s.check_max_unkeyed_events}
    if over:
        agent, n = max(over.items(), key=lambda kv: (kv[1], kv[0]))
        more = f" (and {len(over) - 1} more agents)" if len(over) > 1 else ""
        idem = f'agent "{agent}" emitted {n} events without an idempotency key{more}'
    else:
        idem = f"every agent names its idempotency keys (allowed without: {s.check_max_unkeyed_events} per agent)"
    lines.append(CheckLine("Idempotency", not over, idem))
    if not e.publishers:
        lines.append(CheckLine("Committed-event subscriptions", False,
                               "no committed-topic publisher has run: subscribers get no events"))
    else:
        lag = e.publisher_lag_seconds or 0.0
        behind = max(e.publishers.values())
        lines.append(CheckLine("Committed-event subscriptions", lag <= s.check_max_lag_seconds,
                               f"{len(e.publishers)} publishers, {behind} events behind, max lag {lag:.1f} s "
                               f"(limit {_n(s.check_max_lag_seconds)} s)"))
    found = f"{e.deadlocks_found} deadlocks, {e.waits_exceeded} long waits recorded"
    lines.append(CheckLine("Deadlock alerting", e.alert_sink is not None,
                           f"alerts go to {e.alert_sink}; {found}" if e.alert_sink else
                           f"no alert sink configured (EVENTSTORE_ALERT_WEBHOOK); {found}"))
    if not e.kill_switch_reachable:
        kill = (False, "the agents table cannot be changed with this connection: nobody can kill an agent")
    elif e.killed_holding:
        kill = (False, f"killed agents still hold leases: {', '.join(e.killed_holding)}")
    else:
        kill = (True, f"reachable, {len(e.killed_agents)} agents killed")
    lines.append(CheckLine("Kill switch", *kill))
    lines.append(CheckLine("History", e.chain_ok,
                           f"chain verified to position {e.head:,}" if e.chain_ok else
                           f"chain broken at position {e.chain_bad_position}: {e.chain_problem} "
                           f"({e.chain_checked:,} events verified before it)"))
    return lines


def summary(lines: list[CheckLine]) -> str:
    failed = sum(not ln.ok for ln in lines)
    return "Result: all controls pass" if not failed else f"Result: {failed} issue{'s' if failed != 1 else ''} found"
