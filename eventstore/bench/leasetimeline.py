"""Where a contended lease request's time goes, read from the lock chain on the database's own clock
(``recorded_at`` is ``clock_timestamp()`` when a row is chained), and the floor any design with one
global, durable lock chain and strict FIFO must pay in a closed loop of agents.

Each lease step appends its lock events to the one lock chain under the chain's head row, which it holds
until its commit is acknowledged; a durable commit therefore holds the head through its WAL flush, and
all resources' durable lock transactions run one after another. By Little's law a closed loop of N agents
that each take and release a lease has a mean latency of N / throughput; with at least one durable chained
commit per acquire+release (the grant, by hand-off or not) and C the time of one such commit, throughput
is at most 1 / C, so the mean latency is at least N x C. Under strict FIFO every request waits its turn
behind the others, so the latencies gather around the mean and the p99 cannot be below it either.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

ROWS = """
SELECT xmin::text, stream, type, agent_id, recorded_at, (payload::jsonb ->> 'enqueued_at')::timestamptz
FROM lock_events WHERE stream LIKE %s ORDER BY chain_seq
"""


@dataclass
class Timeline:
    """Per-request phases (ms, database clock) and the pace of the lock chain during a contended run."""

    queued_to_granted: list[float] = field(default_factory=list)  # LeaseWaited -> its LeaseGranted
    ahead_when_queued: list[int] = field(default_factory=list)  # requests in front when it queued
    per_turn_ahead: list[float] = field(default_factory=list)  # queued_to_granted / (ahead + 1)
    hold: list[float] = field(default_factory=list)  # LeaseGranted -> LeaseReleased of the same holder
    gap: list[float] = field(default_factory=list)  # LeaseReleased -> the next LeaseGranted, same resource
    transactions: int = 0  # chained transactions (distinct xmin)
    queue_only: int = 0  # of which wrote only LeaseWaited (a place in the queue; none since migration 0013)
    grants: int = 0
    span_ms: float = 0.0  # first to last chained row
    rows: int = 0  # lock-chain rows (lock events)


def timeline(rows: list[tuple[Any, ...]]) -> Timeline:
    """Replay lock-chain rows (xmin, stream, type, agent, recorded_at[, enqueued_at]), in chain order, into a
    Timeline. A LeaseWaited with ``enqueued_at`` (migration 0013: chained when the wait ends) opened its
    wait at that time: it is replayed as the wait's start at ``enqueued_at`` and its end at its own row."""
    out = Timeline()
    kinds: dict[str, set[str]] = {}
    replay: list[tuple[datetime, int, str, str, str]] = []  # at, chain order, stream, kind, agent
    spans = False
    for i, (xid, stream, kind, agent, at, *rest) in enumerate(rows):
        kinds.setdefault(xid, set()).add(kind)
        opened = rest[0] if rest else None
        if kind == "LeaseWaited" and opened is not None:
            spans = True
            replay.append((opened, i, stream, "LeaseWaited", agent))
            nxt = rows[i + 1] if i + 1 < len(rows) else None
            if nxt is None or nxt[1] != stream or nxt[2] != "LeaseGranted" or nxt[3] != agent:
                replay.append((at, i, stream, "LeaseDenied", agent))  # ended without a grant
        else:
            replay.append((at, i, stream, kind, agent))
    if spans:
        replay.sort(key=lambda e: (e[0], e[1]))
    queues: dict[str, list[tuple[str, datetime, int]]] = {}
    granted_at: dict[tuple[str, str], datetime] = {}
    released_at: dict[str, datetime] = {}
    for at, _, stream, kind, agent in replay:
        q = queues.setdefault(stream, [])
        if kind == "LeaseWaited":
            q.append((agent, at, len(q)))
        elif kind == "LeaseDenied":
            queues[stream] = [w for w in q if w[0] != agent]
        elif kind == "LeaseGranted":
            out.grants += 1
            mine = [w for w in q if w[0] == agent]
            if mine:
                _, since, ahead = mine[0]
                waited = (at - since).total_seconds() * 1e3
                out.queued_to_granted.append(waited)
                out.ahead_when_queued.append(ahead)
                out.per_turn_ahead.append(waited / (ahead + 1))
                queues[stream] = [w for w in q if w[0] != agent]
            if stream in released_at:
                out.gap.append((at - released_at.pop(stream)).total_seconds() * 1e3)
            granted_at[(stream, agent)] = at
        elif kind in ("LeaseReleased", "LeaseExpired"):
            since_grant = granted_at.pop((stream, agent), None)
            if since_grant is not None and kind == "LeaseReleased":
                out.hold.append((at - since_grant).total_seconds() * 1e3)
            released_at[stream] = at
    out.transactions, out.rows = len(kinds), len(rows)
    out.queue_only = sum(1 for k in kinds.values() if k == {"LeaseWaited"})
    if rows:
        out.span_ms = (rows[-1][4] - rows[0][4]).total_seconds() * 1e3
    return out


def read_timeline(url: str, prefix: str) -> Timeline:
    """The Timeline of the lease streams ``lease-<prefix>*`` in the database at ``url``."""
    with psycopg.connect(url) as conn:
        rows: list[Any] = conn.execute(ROWS, ("lease-" + prefix + "%",)).fetchall()
    return timeline(rows)


def fifo_floor_ms(agents: int, commit_ms: float, durable_per_request: float = 1.0) -> float:
    """The least mean latency (ms) of a closed loop of ``agents`` acquire+release requests when each needs
    ``durable_per_request`` durable commits through the one lock chain, each taking ``commit_ms``."""
    return agents * durable_per_request * commit_ms


SAMPLE = """
SELECT coalesce(wait_event_type || ':' || wait_event, state) FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
  AND state <> 'idle'
"""


class WaitSampler:
    """Samples what the benchmark's busy server backends are doing (pg_stat_activity) every few
    milliseconds while a run goes: the database's own view of where a request's time goes (waiting for a
    lock: ``Lock:advisory`` the resource's, ``Lock:transactionid`` / ``Lock:tuple`` the lock chain's head
    row; ``IO:WalSync`` a flush; ``Client:ClientRead`` waiting for the client; ``active`` running)."""

    def __init__(self, url: str, interval: float = 0.005) -> None:
        self.url, self.interval = url, interval
        self.counts: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wait-sampler", daemon=True)

    def __enter__(self) -> WaitSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.wait(self.interval):
                self.samples += 1
                for (what,) in conn.execute(SAMPLE).fetchall():
                    self.counts[str(what)] = self.counts.get(str(what), 0) + 1

    def shares(self, top: int = 6) -> list[tuple[str, float]]:
        """The commonest states as the mean number of backends in each per sample, most first."""
        ranked = sorted(self.counts.items(), key=lambda kv: -kv[1])[:top]
        return [(k, v / max(self.samples, 1)) for k, v in ranked]
