"""The promise checks of a simulation: each compares what agents were told, what a subscriber saw and
what PostgreSQL holds, and returns PASS or FAIL with the evidence in one line."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from eventstore.examples.inventory import STREAM_PREFIX, InventoryAdjusted
from eventstore.postgres.eventlog import verify_chain
from eventstore.simulate.agents import Ledger
from eventstore.simulate.faults import HostileSent

Cursor = psycopg.Cursor[Any]


@dataclass(frozen=True)
class Check:
    promise: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.promise}: {self.detail}"


@dataclass(frozen=True)
class SeenEvent:
    """An event as a subscriber applied it."""

    position: int
    event_id: str
    stream: str
    version: int


def log_quantities(cur: Cursor, prefix: str) -> dict[str, int]:
    """fold(log): each SKU's quantity computed from the event log alone (adjustments only here)."""
    cur.execute(
        "SELECT payload->>'sku', sum(CASE WHEN type = 'InventoryUpdated' THEN 0 ELSE "
        "(payload->>'delta')::bigint END) FROM events WHERE stream LIKE %s GROUP BY 1",
        (STREAM_PREFIX + prefix.replace("%", r"\%").replace("_", r"\_") + "%",))
    return {str(sku): int(q) for sku, q in cur.fetchall()}


def table_quantities(cur: Cursor, table: str, prefix: str) -> dict[str, int]:
    cur.execute(psycopg.sql.SQL("SELECT sku, quantity FROM {} WHERE starts_with(sku, %s)").format(
        psycopg.sql.Identifier(table)), (prefix,))
    return {str(sku): int(q) for sku, q in cur.fetchall()}


def _diff(a: dict[str, int], b: dict[str, int]) -> str:
    bad = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)} vs {b.get(k)}" for k in bad[:3]) + (" ..." if len(bad) > 3 else "")


def no_lost_update(ledgers: Sequence[Ledger], log: dict[str, int], model: dict[str, int]) -> Check:
    believed: dict[str, int] = {}
    committed = 0
    violations = [v for led in ledgers for v in led.violations if "lost update" in v]
    for led in ledgers:
        for c in led.committed.values():
            believed[c.sku] = believed.get(c.sku, 0) + c.delta
            committed += 1
    # A run in which nothing committed proves nothing: it fails rather than passing vacuously.
    ok = committed > 0 and not violations and believed == log == model
    detail = (f"{committed} committed adjustments on {len(believed)} SKUs; agents' ledger == log == read model"
              if ok else "no adjustment committed: nothing was tested (are the agents registered?)"
              if committed == 0 else "; ".join(violations[:2]) or f"ledger vs log: {_diff(believed, log)}; "
              f"log vs read model: {_diff(log, model)}")
    return Check("no lost update", ok, detail)


def idempotency(cur: Cursor, ledgers: Sequence[Ledger], agent_ids: Iterable[str]) -> Check:
    ids = list(agent_ids)
    # The agents' own adjustments (the kill switch also records events under a killed agent's id).
    cur.execute("SELECT idempotency_key, count(*) FROM events WHERE agent_id = ANY(%s) AND type = %s "
                "AND NOT starts_with(idempotency_key, 'hostile-') GROUP BY 1", (ids, InventoryAdjusted.event_type))
    in_log = {str(k): int(n) for k, n in cur.fetchall()}
    twice = [k for k, n in in_log.items() if n > 1]
    believed = {k for led in ledgers for k in led.committed}
    missing = sorted(believed - set(in_log))
    unclaimed = sorted(set(in_log) - believed)
    dup_violations = [v for led in ledgers for v in led.violations if "re-emitting" in v]
    unresolved = [k for led in ledgers for k in led.unresolved]
    checks = sum(led.duplicate_checks for led in ledgers)
    retries = sum(led.timeouts for led in ledgers)
    ok = bool(in_log) and checks > 0 and not (twice or missing or unclaimed or dup_violations or unresolved)
    detail = ("nothing was tested: no key committed or no committed key re-emitted" if not (in_log and checks)
              else f"{len(in_log)} keys each committed once; {checks} re-emitted committed keys all answered "
              f"duplicate; {retries} re-emits after a timeout or outage" if ok else
              f"keys twice {twice[:3]}, told committed but absent {missing[:3]}, in log but not told "
              f"{unclaimed[:3]}, {dup_violations[:2]}, undecided {unresolved[:3]}")
    return Check("idempotency", ok, detail)


def committed_only(cur: Cursor, seen: Sequence[SeenEvent]) -> Check:
    if not seen:
        return Check("committed only", False, "the subscriber applied no event: nothing was tested")
    cur.execute("SELECT position, event_id::text FROM events")
    log = {int(p): str(e) for p, e in cur.fetchall()}
    foreign = [s for s in seen if log.get(s.position) != s.event_id]
    ok = not foreign
    return Check("committed only", ok, f"subscriber applied {len(seen)} events, all in the log at their position"
                 if ok else f"{len(foreign)} seen events not committed as seen, e.g. {foreign[0]}")


def order_without_holes(cur: Cursor, seen: Sequence[SeenEvent]) -> Check:
    cur.execute("SELECT count(*), coalesce(min(position), 0), coalesce(max(position), 0) FROM events")
    row = cur.fetchone()
    count, low, high = (int(x) for x in row) if row else (0, 0, 0)
    cur.execute("SELECT count(*) FROM (SELECT version, row_number() OVER (PARTITION BY stream ORDER BY version) "
                "AS rn FROM events) v WHERE version <> rn")
    gaps_row = cur.fetchone()
    version_gaps = int(gaps_row[0]) if gaps_row else -1
    problems = []
    if count and (low != 1 or high != count):
        problems.append(f"log positions {low}..{high} hold {count} events")
    if version_gaps:
        problems.append(f"{version_gaps} stream versions out of sequence in the log")
    positions = [s.position for s in seen]
    if positions != list(range(1, len(positions) + 1)):
        first = next((i for i, p in enumerate(positions) if p != i + 1), 0)
        problems.append(f"subscriber saw positions out of order or with a hole near index {first}")
    last_version: dict[str, int] = {}
    for s in seen:
        if s.version != last_version.get(s.stream, 0) + 1:
            problems.append(f"subscriber saw {s.stream} v{s.version} after v{last_version.get(s.stream, 0)}")
            break
        last_version[s.stream] = s.version
    if len(positions) != count:
        problems.append(f"subscriber saw {len(positions)} of {count} committed events")
    ok = not problems
    return Check("order without holes", ok, f"positions 1..{high} gapless, per-stream versions gapless, the "
                 "subscriber saw every one in order" if ok else "; ".join(problems))


def exactly_once_effect(log: dict[str, int], model: dict[str, int], view: dict[str, int]) -> Check:
    if not log:
        return Check("exactly-once effect", False, "the log holds no SKU: nothing was tested")
    ok = log == model == view
    return Check("exactly-once effect", ok, f"read model == local view == fold(log) on {len(log)} SKUs" if ok
                 else f"log vs read model: {_diff(log, model)}; log vs view: {_diff(log, view)}")


def rebuild_equals_live(live: dict[str, int], rebuilt: dict[str, int], error: str | None) -> Check:
    if error is None and not live:
        return Check("rebuild equals live", False, "the live table is empty: nothing was tested")
    ok = error is None and live == rebuilt
    return Check("rebuild equals live", ok, f"rebuilt inventory table equals the live one on {len(live)} SKUs"
                 if ok else error or _diff(live, rebuilt))


def history_verifies(cur: Cursor) -> Check:
    report = verify_chain(cur)
    return Check("history verifies", report.ok, f"hash chain verified over {report.checked} events" if report.ok
                 else f"chain broken at position {report.first_bad_position}: {report.problem}")


def hostile_accounted(cur: Cursor, topic: str, sent: Sequence[HostileSent]) -> Check:
    """Every hostile message ends dead-lettered or decided, with a reason."""
    missing = []
    for h in sent:
        cur.execute('SELECT 1 FROM dead_letters WHERE topic = %s AND partition = %s AND "offset" = %s '
                    "UNION ALL SELECT 1 FROM outcomes WHERE source_partition = %s AND source_offset = %s "
                    "UNION ALL SELECT 1 FROM identity_refusals WHERE source_partition = %s AND source_offset = %s",
                    (topic, h.partition, h.offset, h.partition, h.offset, h.partition, h.offset))
        if cur.fetchone() is None:
            missing.append(f"{h.kind}@{h.partition}:{h.offset}")
    ok = bool(sent) and not missing
    return Check("hostile input ends dead-lettered or decided", ok,
                 f"{len(sent)} hostile messages each dead-lettered or rejected with a reason" if ok
                 else f"no outcome for {missing}" if missing else "no hostile message was produced")


def kill_switch(cur: Cursor, windows: Sequence[tuple[str, object, object]], ledgers: Sequence[Ledger]) -> Check:
    """A killed agent's new events are rejected: none commits between its kill and its revival."""
    rejected = sum(led.killed_rejections for led in ledgers)
    leaked = []
    for agent, start, end in windows:
        cur.execute("SELECT count(*) FROM events WHERE agent_id = %s AND recorded_at > %s AND recorded_at < %s",
                    (agent, start, end))
        row = cur.fetchone()
        if row and int(row[0]):
            leaked.append(f"{agent}: {row[0]} events committed while killed")
    ok = bool(windows) and not leaked
    return Check("kill switch", ok, f"{len(windows)} agent kills; nothing committed while killed; {rejected} "
                 "emits rejected as agent_killed" if ok else "; ".join(leaked) or "no agent was killed")


def components(unexpected_exits: Sequence[str], agent_errors: Sequence[str], other: Sequence[str]) -> Check:
    problems = [*unexpected_exits, *agent_errors, *other]
    return Check("components heal (nothing stopped on its own)", not problems,
                 "projectors, publisher, subscriber, outcome listeners, coordinator and agents carried on "
                 "through every fault" if not problems else "; ".join(problems)[:600])
