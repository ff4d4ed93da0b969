"""Lease benchmark: acquire+release latency and throughput, uncontended and with 16 agents on 4
resources, next to a plain ``pg_advisory_lock``/``pg_advisory_unlock`` baseline measured in the same run.

Run: ``eventstore bench leases`` (starts an ephemeral embedded PostgreSQL unless
``EVENTSTORE_DATABASE_URL`` is set, in which case that database must already be migrated).

The baseline is what a bare session lock costs: no durability, no TTL, no history, no fencing. A lease
is two durable transactions that each append a lock event to the hash-chained lock chain (migration
0009), so the ratio printed is the price of those guarantees, not a like-for-like race. Two floors are
measured in the same rounds: the same two lock events appended to the lock chain (what a lease must
write today) and to the event log under its head lock (what a lease wrote before the lock chain).

In the contended run a release hands the lease to the head of the queue in its own transaction
(migration 0010); the bench prints that hand-off's latency split (release call, release commit -> waiter
notified, notified -> acquire returns) and checks FIFO twice: by each thread's clock before its request,
and by replaying the database's own queue from the lock chain. The contended run starts after one warm-up
request per agent and prints where its time went on the database clock, the CPU per request, the WAL fsyncs
per request, what the server's backends waited for, and the FIFO floor (Little's law) beside the p99
(eventstore/bench/leasetimeline.py). The same contended run follows with the 16 agents spread over
``--processes`` processes (default 4; real agents do not share one GIL), with its own CPU per request,
floor and FIFO check. ``--no-coupling`` skips the write-path part.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from eventstore.bench.launch import postmaster_pid
from eventstore.bench.leaserun import (
    GRANTS,
    HANDED,
    RELEASES,
    contended_body,
    contended_processes,
    lease_round_on,
    pct,
    queue_order,
    run_threads,
    summary,
)
from eventstore.bench.leasetimeline import WaitSampler, fifo_floor_ms, read_timeline
from eventstore.bench.writepath import CpuMeter
from eventstore.coordination import Coordinator
from eventstore.core.lockevents import LeaseReleased
from eventstore.core.records import DirectEvent
from eventstore.postgres.eventlog import append_direct
from eventstore.postgres.lockchain import LockLog


def lease_round(c: Coordinator, n: int) -> list[float]:
    """n acquire+release cycles of one agent on one resource."""
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        c.acquire("bench:solo", agent_id="solo", wait=0).release()
        lat.append(time.perf_counter() - t)
    return lat


def wal_fsyncs(url: str) -> int | None:
    """WAL fsyncs of the whole server so far (pg_stat_io; backends report at their exit or within a
    second), or None before PostgreSQL 18. Read from the database, so the count does not depend on the
    machine's load."""
    with psycopg.connect(url) as conn:
        try:
            conn.execute("SELECT pg_stat_force_next_flush()")
            row = conn.execute(WAL_FSYNCS).fetchone()
        except psycopg.Error:
            return None
    return int(row[0]) if row and row[0] is not None else None


def chain_floor_round(conn: psycopg.Connection[Any], n: int) -> list[float]:
    """What every lease writes regardless of its own logic: two durable transactions that each append
    one lock event to the lock chain (the grant's and the release's)."""
    event = LeaseReleased(resource="bench:floor", agent_id="solo", token=1, held_seconds=0.0)
    lat = []
    with conn.cursor() as cur:
        for _ in range(n):
            t = time.perf_counter()
            for _ in range(2):
                log = LockLog()
                log.add("lease-bench:floor", event, "solo")
                log.append(cur)
                conn.commit()
            lat.append(time.perf_counter() - t)
    return lat


def floor_round(conn: psycopg.Connection[Any], n: int) -> list[float]:
    """What a lease wrote before the lock chain: two transactions that each append one lock event to the
    event log under its head lock (the grant's and the release's)."""
    event = LeaseReleased(resource="bench:floor", agent_id="solo", token=1, held_seconds=0.0)
    item = DirectEvent(stream="lease-bench:floor", event=event, agent_id="solo")
    lat = []
    with conn.cursor() as cur:
        for _ in range(n):
            t = time.perf_counter()
            for _ in range(2):
                append_direct(cur, [item])
                conn.commit()
            lat.append(time.perf_counter() - t)
    return lat


def advisory_round(conn: psycopg.Connection[Any], n: int) -> list[float]:
    """n lock+unlock pairs of a session-level advisory lock (autocommit connection)."""
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        conn.execute("SELECT pg_advisory_lock(%s)", (42,))
        conn.execute("SELECT pg_advisory_unlock(%s)", (42,))
        lat.append(time.perf_counter() - t)
    return lat


def uncontended(url: str, n: int, rounds: int = 10) -> dict[str, list[float]]:
    """All variants in interleaved rounds, so that a noisy neighbour hurts each of them alike."""
    lat: dict[str, list[float]] = {"lease": [], "pipeline": [], "chain": [], "floor": [], "advisory": []}
    with Coordinator(url, pool_size=2, pipeline=False) as plain, Coordinator(url, pool_size=2) as piped, \
            psycopg.connect(url) as conn, psycopg.connect(url, autocommit=True) as auto:
        lease_round(plain, 50)  # warm pools and plan caches
        lease_round(piped, 50)
        chain_floor_round(conn, 50)
        floor_round(conn, 50)
        advisory_round(auto, 50)
        per = max(1, n // rounds)
        for _ in range(rounds):
            lat["lease"] += lease_round(plain, per)
            lat["pipeline"] += lease_round(piped, per)
            lat["chain"] += chain_floor_round(conn, per)
            lat["floor"] += floor_round(conn, per)
            lat["advisory"] += advisory_round(auto, per)
    return lat


def cpu_per_lease(url: str, n: int) -> dict[str, dict[str, float]]:
    """CPU microseconds per acquire+release (and per floor round) of this process and of PostgreSQL (the
    postmaster and all its processes, WAL writer included), read from /proc around n rounds of each."""
    out: dict[str, dict[str, float]] = {}
    with Coordinator(url, pool_size=2) as piped, psycopg.connect(url) as conn:
        postmaster = postmaster_pid(conn)
        rounds: dict[str, Callable[[int], list[float]]] = {
            "lease": lambda k: lease_round(piped, k), "floor": lambda k: chain_floor_round(conn, k)}
        for name, run in rounds.items():
            run(50)
            meter = CpuMeter({"client": os.getpid(), "postgres": postmaster})
            meter.start()
            run(n)
            meter.stop()
            out[name] = {k: v / n * 1e6 for k, v in meter.used.items()}
    return out


WAL_FSYNCS = "SELECT sum(fsyncs)::bigint FROM pg_stat_io WHERE object = 'wal'"  # PostgreSQL 18+
WARMUP: list[float] = []  # each agent's first request (own resource) before the contended run


def lease_contended(url: str, agents: int, resources: int, per_agent: int,
                    warmed: Callable[[], None] | None = None) -> tuple[list[float], float]:
    """The timed run: ``agents`` threads take and release ``resources`` resources in turn. Each agent first
    takes a resource of its own once (its first request ever, its pool connection opened; WARMUP), so
    the timed run measures the steady state; ``warmed`` is called between the two (to start meters)."""
    c = Coordinator(url, pool_size=agents)
    GRANTS.clear()
    RELEASES.clear()
    HANDED.clear()
    WARMUP[:] = run_threads(agents, 1, lambda i: lease_round_on(c, f"bench:warm-{i}", f"agent-{i}"))[0]
    if warmed is not None:
        warmed()
    try:
        return run_threads(agents, per_agent, lambda i: contended_body(c, i, resources, per_agent, "bench:r"))
    finally:
        c.close()


def handoffs(url: str, prefix: str) -> dict[str, list[float]]:
    """From the lock chain of the last contended run: per resource, how long each grant was held (grant ->
    release) and how long a released resource stayed free before its next grant (ms, database clock)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT lease_resource, type, recorded_at FROM lock_events WHERE lease_resource LIKE %s "
            "AND type IN ('LeaseGranted', 'LeaseReleased') ORDER BY lease_resource, chain_seq",
            (prefix + "%",)).fetchall()
    out: dict[str, list[float]] = {"hold": [], "handoff": []}
    last: tuple[str, str, Any] | None = None
    for resource, kind, at in rows:
        if last is not None and last[0] == resource and last[1] != kind:
            out["hold" if kind == "LeaseReleased" else "handoff"].append((at - last[2]).total_seconds() * 1e3)
        last = (resource, kind, at)
    return out if out["hold"] and out["handoff"] else {}


def handoff_split(releases: list[tuple[str, float, float]],
                  handed: list[tuple[str, float, float]]) -> dict[str, list[float]]:
    """The hand-off latency in three parts (ms, one process's clock): the release call (its transaction,
    which grants the next waiter, up to the commit's acknowledgement), release commit acknowledged ->
    the waiter's listener has the notification (can be negative: PostgreSQL notifies listeners at the
    commit, the releaser's acknowledgement may arrive later), and notification -> the waiter's acquire
    returns. Each hand-off is matched with the last release of its resource called before it."""
    by_resource: dict[str, list[tuple[float, float]]] = {}
    for resource, start, end in releases:
        by_resource.setdefault(resource, []).append((start, end))
    for items in by_resource.values():
        items.sort()
    out: dict[str, list[float]] = {"release": [], "woken": [], "returned": [], "total": []}
    for resource, woken, returned in handed:
        before = [x for x in by_resource.get(resource, []) if x[0] <= woken]
        if not before:
            continue
        start, end = before[-1]
        out["release"].append((end - start) * 1e3)
        out["woken"].append((woken - end) * 1e3)
        out["returned"].append((returned - woken) * 1e3)
        out["total"].append((returned - start) * 1e3)
    return out


def fifo_inversions(grants: list[tuple[str, float, float]], margin: float = 0.005) -> tuple[int, int]:
    """Pairs on one resource where a request made more than ``margin`` seconds later was granted first
    (FCFS broken), and the number of pairs compared. The margin absorbs the gap between a thread's
    clock reading and its request reaching the database."""
    by_resource: dict[str, list[tuple[float, float]]] = {}
    for resource, asked, granted in grants:
        by_resource.setdefault(resource, []).append((asked, granted))
    inversions = pairs = 0
    for items in by_resource.values():
        items.sort()
        for i, (asked_i, granted_i) in enumerate(items):
            for asked_j, granted_j in items[i + 1:]:
                if asked_j - asked_i <= margin or asked_j > granted_i:
                    continue  # asked together, or j asked after i already held it: no order to keep
                pairs += 1
                if granted_j < granted_i:
                    inversions += 1
    return inversions, pairs


def advisory_contended(url: str, agents: int, resources: int, per_agent: int) -> tuple[list[float], float]:
    conns = [psycopg.connect(url, autocommit=True) for _ in range(agents)]

    def body(i: int) -> list[float]:
        lat = []
        for k in range(per_agent):
            t = time.perf_counter()
            conns[i].execute("SELECT pg_advisory_lock(%s)", (1000 + (i + k) % resources,))
            conns[i].execute("SELECT pg_advisory_unlock(%s)", (1000 + (i + k) % resources,))
            lat.append(time.perf_counter() - t)
        return lat

    try:
        return run_threads(agents, per_agent, body)
    finally:
        for conn in conns:
            conn.close()


def conditions(url: str) -> None:
    with psycopg.connect(url) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        sync = conn.execute("SHOW synchronous_commit").fetchone()
        fsync = conn.execute("SHOW fsync").fetchone()
    print("conditions:")
    print(f"  python {platform.python_version()} on {platform.platform()}, {os.cpu_count()} CPUs")
    print(f"  PostgreSQL {version[0] if version else '?'} (synchronous_commit={sync[0] if sync else '?'}, "
          f"fsync={fsync[0] if fsync else '?'}), client and server on one machine")
    print("  lease = 2 durable transactions (grant, release), each appending a lock event to the lock chain;")
    print("  contended: a release grants the head of the queue in its own transaction (direct hand-off, 0010) and")
    print("  signs its notice, which the waiter believes without a read (0011); first request and release are one")
    print("  statement each (autocommit); queueing writes the queue row only (no flush wait) and the wait is")
    print("  chained when it ends, in the durable commit of its grant or hand-off (0013)")
    print(f"  load average (1 min) at start: {os.getloadavg()[0]:.2f}")


def bench(url: str, n: int, per_agent: int, processes: int = 4) -> None:
    conditions(url)
    print(f"uncontended acquire+release ({n} per variant, 10 interleaved rounds, one agent, one resource):")
    u = uncontended(url, n)
    summary("lease without pipeline mode (pipeline=False)", u["lease"], sum(u["lease"]))
    lease_u = summary("lease (Coordinator default: pipeline mode)", u["pipeline"], sum(u["pipeline"]))
    chain = summary("floor: 2 txns, 1 lock-chain event each", u["chain"], sum(u["chain"]))
    floor = summary("old floor: 2 txns, 1 event-log event each", u["floor"], sum(u["floor"]))
    adv_u = summary("baseline pg_advisory_lock + unlock", u["advisory"], sum(u["advisory"]))
    print(f"  ratio lease/lock-chain floor p50: {lease_u['p50'] / chain['p50']:.2f}x; "
          f"lock-chain floor/event-log floor p50: {chain['p50'] / floor['p50']:.2f}x")
    cpu = cpu_per_lease(url, max(100, n))
    for name, label in (("lease", "lease acquire+release"), ("floor", "floor (2 lock-chain txns)")):
        c = cpu[name]
        print(f"  CPU per {label}: client {c['client']:.0f} us, PostgreSQL {c['postgres']:.0f} us "
              f"(machine, all processes: {c['machine (all processes)']:.0f} us)")
    print(f"  ratio lease/floor CPU: client {cpu['lease']['client'] / max(cpu['floor']['client'], 1e-9):.1f}x, "
          f"PostgreSQL {cpu['lease']['postgres'] / max(cpu['floor']['postgres'], 1e-9):.1f}x")
    for key in ("p50", "p99"):
        print(f"  ratio lease/baseline {key}: {lease_u[key] / adv_u[key]:.1f}x")
    print(f"contended: 16 agents (threads) on 4 resources, {per_agent} acquire+release each "
          "(after one warm-up request per agent on a resource of its own):")
    fsyncs = wal_fsyncs(url)
    with psycopg.connect(url) as conn:
        meter = CpuMeter({"client": os.getpid(), "postgres": postmaster_pid(conn)})
    with WaitSampler(url, interval=0.01) as sampler:
        lat, wall = lease_contended(url, 16, 4, per_agent, warmed=meter.start)
    time.sleep(0.5)  # pool connections closed: their backends report their I/O at exit
    meter.stop()
    fsyncs_after = wal_fsyncs(url)
    per_request = None if fsyncs is None or fsyncs_after is None else (fsyncs_after - fsyncs) / max(len(lat), 1)
    print(f"  warm-up (each agent's first request, connection opened): max {max(WARMUP) * 1e3:.1f} ms")
    lease_c = summary("lease", lat, wall)
    contended_report(url, lease_c, chain["p50"] / 2, per_request)
    cpu_client, cpu_pg = (meter.used[k] / max(len(lat), 1) * 1e3 for k in ("client", "postgres"))
    cores, ncpu = (meter.used["client"] + meter.used["postgres"]) / wall, os.cpu_count() or 1
    cpu_floor = fifo_floor_ms(16, (cpu_client + cpu_pg) / ncpu)
    print(f"  CPU per contended request: client {cpu_client * 1e3:.0f} us, PostgreSQL {cpu_pg * 1e3:.0f} us "
          f"(uncontended: {cpu['lease']['client']:.0f} + {cpu['lease']['postgres']:.0f} us); the run got "
          f"{cores:.2f} of {ncpu} cores")
    print(f"  FIFO floor (Little's law: mean = 16 agents / throughput, here {16e3 / lease_c['rate']:.1f} ms; "
          f"under FIFO the p99 is not below the mean): CPU floor with all {ncpu} cores ours "
          f"16 x {cpu_client + cpu_pg:.2f} ms / {ncpu} = {cpu_floor:.1f} ms; with the {cores:.2f} cores this run got "
          f"{fifo_floor_ms(16, (cpu_client + cpu_pg) / max(cores, 1e-9)):.1f} ms; measured mean {lease_c['mean']:.1f}, "
          f"p99 {lease_c['p99']:.1f} ms (p99 / floor {lease_c['p99'] / cpu_floor:.1f}x)")
    print(f"    server backends, mean number per sample in each state ({sampler.samples} samples of "
          "pg_stat_activity): " + ", ".join(f"{k} {v:.2f}" for k, v in sampler.shares()))
    handoff = handoffs(url, "bench:r")
    if handoff:
        print(f"  on the database clock: hold (grant -> release) p50 {pct(handoff['hold'], .5):.1f} ms, p99 "
              f"{pct(handoff['hold'], .99):.1f} ms; handoff (release -> next grant) p50 "
              f"{pct(handoff['handoff'], .5):.1f} ms, p99 {pct(handoff['handoff'], .99):.1f} ms")
    split = handoff_split(RELEASES, HANDED)
    if split["total"]:
        print(f"  direct hand-offs: {len(split['total'])} of {len(GRANTS)} grants came by a release's notification "
              "(a signed notice is believed without a read; 0011); latency split, ms p50 / p99:")
        for key, label in (("release", "release call (grants the next waiter, commit acknowledged)"),
                           ("woken", "release commit acknowledged -> waiter notified"),
                           ("returned", "waiter notified -> its acquire returns"),
                           ("total", "release called -> waiter's acquire returns")):
            print(f"    {label:<58} {pct(split[key], .5):7.2f} / {pct(split[key], .99):7.2f}")
    inversions, pairs = fifo_inversions(GRANTS)
    print(f"  FIFO: {inversions} of {pairs} waiting pairs granted out of request order "
          f"(aim 0; p99 aim <= 50 ms)")
    skipped, checked = queue_order(url, "bench:r")
    print(f"  FIFO in the database's own order: {skipped} of {checked} grants went past the head of a "
          "non-empty queue (the pairs above are timed by each thread's clock before its request)")
    shapes = [("16 threads in one process", lease_c, cpu_floor, skipped)]
    if processes > 1:
        shapes.append(contended_processes(url, per_agent, processes))
    lat, wall = advisory_contended(url, 16, 4, per_agent)
    adv_c = summary("baseline pg_advisory_lock + unlock", lat, wall)
    print(f"  ratio lease/baseline p50: {lease_c['p50'] / adv_c['p50']:.1f}x, "
          f"throughput baseline/lease: {adv_c['rate'] / lease_c['rate']:.1f}x")
    goal = "met" if lease_u["p50"] <= 2.0 else "NOT met"
    print(f"goal uncontended lease p50 <= 2 ms: {goal} ({lease_u['p50']:.3f} ms)")
    for shape, figures, floor_ms, past_head in shapes:
        goal = "met" if figures["p99"] <= 50.0 and past_head == 0 else "NOT met"
        print(f"goal contended p99 <= 50 ms with FIFO kept, {shape}: {goal} ({figures['p99']:.1f} ms against a CPU "
              f"floor of {floor_ms:.1f} ms, {past_head} grants past the head of the database's queue)")
    print(f"  (threads: {inversions} pairs out of request order by thread clocks)")
    print(f"  load average (1 min) at end: {os.getloadavg()[0]:.2f}")


def contended_report(url: str, lease_c: dict[str, float], commit_ms: float, fsyncs_per_request: float | None) -> None:
    """Where the contended requests' time went on the database clock, and the FIFO floor (leasetimeline)."""
    t = read_timeline(url, "bench:r")
    if not t.queued_to_granted:
        return
    print(f"  on the database clock: {len(t.queued_to_granted)} of {t.grants} grants waited in the queue; "
          f"queued -> granted p50 {pct(t.queued_to_granted, .5):.1f} / p99 {pct(t.queued_to_granted, .99):.1f} ms "
          f"with {pct([float(x) for x in t.ahead_when_queued], .5):.0f} ahead (p50), "
          f"{pct(t.per_turn_ahead, .5):.1f} ms per turn")
    print(f"    a turn = hold (grant -> release, the holder's client) p50 {pct(t.hold, .5):.1f} / p99 "
          f"{pct(t.hold, .99):.1f} ms + release -> next grant p50 {pct(t.gap, .5):.2f} ms")
    print(f"    lock chain: {t.transactions} transactions in {t.span_ms:.0f} ms ({t.span_ms / t.transactions:.2f} ms "
          f"each; one durable lock-chain commit alone: {commit_ms:.2f} ms p50), {t.queue_only} only queued "
          f"(each a durable commit of its own); WAL fsyncs per acquire+release: "
          f"{'n/a' if fsyncs_per_request is None else f'{fsyncs_per_request:.2f}'}")
    per_request = t.transactions / max(t.grants, 1)
    print(f"  lock chain per request: {per_request:.2f} chained commits, {t.rows / max(t.grants, 1):.2f} lock events "
          "(a wait is chained when it ends, in the commit of its grant: migration 0013)")
    print(f"  lock-chain bound: {per_request:.1f} chained commits per request, each holding the chain's head through "
          f"its flush; at {commit_ms:.2f} ms each (one commit alone, this run) mean >= "
          f"{fifo_floor_ms(16, commit_ms, per_request):.1f} ms")


def write_coupling(url: str, bootstrap: str) -> None:
    """Lease latency with the write path idle and busy (eventstore/bench/coupling.py)."""
    from eventstore.bench import coupling
    from eventstore.core.settings import Settings

    settings = Settings.from_env().with_servers(url, bootstrap).replace(namespace="bench-coupling",
                                                                        projector_group="bench-coupling")
    print("coupling: uncontended leases while one agent emits 5,000 events/s into a projector process:")
    with tempfile.TemporaryDirectory(prefix="bench-coupling-") as logdir:
        for line in coupling.measure(settings, Path(logdir)):
            print("  " + line)


def main(argv: list[str] | None = None) -> None:
    """Start an embedded server (unless one is named), migrate it, and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=1000, help="uncontended rounds")
    parser.add_argument("--per-agent", type=int, default=100, help="contended rounds per agent")
    parser.add_argument("--no-coupling", action="store_true", help="skip the write-path coupling part")
    parser.add_argument("--processes", type=int, default=4,
                        help="also run the 16 contended agents as this many processes (1: threads only)")
    args = parser.parse_args(argv)
    url = os.environ.get("EVENTSTORE_DATABASE_URL")
    if url:
        bench(url, args.rounds, args.per_agent, args.processes)
        if os.environ.get("EVENTSTORE_KAFKA_BOOTSTRAP") and not args.no_coupling:
            write_coupling(url, os.environ["EVENTSTORE_KAFKA_BOOTSTRAP"])
        return
    from eventstore.embedded import EmbeddedServers
    from eventstore.postgres.migrate import upgrade

    with EmbeddedServers(None) as servers:
        upgrade(servers.postgres.url)
        bench(servers.postgres.url, args.rounds, args.per_agent, args.processes)
        if not args.no_coupling:
            write_coupling(servers.postgres.url, servers.broker.bootstrap)


if __name__ == "__main__":
    main()
