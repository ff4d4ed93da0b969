"""History queries against a log written by concurrent agents through Kafka and the projector:
every filter, the causal chain of a correlation id, outcomes and lock events around each write,
keyset pages that never repeat or skip while writes continue, and the write map."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime
from typing import Any

import psycopg
import pytest

from eventstore import AgentClient, Coordinator, Outcome, Projector
from eventstore.core.errors import InvalidQueryError
from eventstore.core.events import Event
from eventstore.core.history_query import MAX_LIMIT, HistoryQuery, stream_category
from eventstore.core.records import DirectEvent
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryAdjusted, InventoryUpdated, stream_for
from eventstore.postgres import eventlog
from eventstore.postgres.history import query, writers

AGENTS = ("order-agent", "inventory-agent", "pricing-agent")


class PriceSet(Event):
    sku: str
    price: int


def all_pages(conn: psycopg.Connection[Any], q: HistoryQuery) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        page = query(conn, HistoryQuery.create(**{**_kwargs(q), "after": after}))
        out += [r.event for r in page.rows]
        if not page.more:
            return out
        after = page.next_cursor


def _kwargs(q: HistoryQuery) -> dict[str, Any]:
    return {"stream": q.stream, "agent": q.agent, "type": q.type, "since": q.since, "until": q.until,
            "from_position": q.from_position, "to_position": q.to_position, "correlation": q.correlation,
            "limit": q.limit}


def truth(url: str, where: str, params: tuple[Any, ...]) -> list[int]:
    with psycopg.connect(url) as conn:
        return [int(r[0]) for r in conn.execute(
            f"SELECT position FROM events WHERE {where} ORDER BY position", params).fetchall()]


@pytest.fixture
def written(settings: Settings, projector: Projector) -> dict[str, Any]:
    """Three agents emit concurrently: own and shared streams, a causal chain, a lease, conflicts, a duplicate."""
    chain = uuid.uuid4()
    facts: dict[str, Any] = {"chain": chain, "results": {}}
    errors: list[BaseException] = []
    start = threading.Barrier(len(AGENTS))

    def work(agent: str) -> None:
        try:
            with AgentClient(agent, settings) as c:
                start.wait(10)
                results = []
                for i in range(6):
                    results.append(c.emit_and_wait(InventoryAdjusted(sku="S1", delta=1), stream_for("S1"),
                                                   idempotency_key=f"{agent}-shared-{i}"))
                    results.append(c.emit_and_wait(PriceSet(sku=f"{agent}-{i}", price=i),
                                                   f"price-{agent.replace('-', '_')}",
                                                   idempotency_key=f"{agent}-price-{i}"))
                facts["results"][agent] = results
        except BaseException as e:  # reported by the test
            errors.append(e)

    threads = [threading.Thread(target=work, args=(a,)) for a in AGENTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    with AgentClient("order-agent", settings) as c, Coordinator(settings) as coord:
        # A causal chain: root -> child -> grandchild, all under one correlation id; an unrelated
        # event caused by the grandchild but with another correlation id is reached through causation.
        root = c.emit_and_wait(InventoryUpdated(sku="C1", quantity=5), stream_for("C1"),
                               idempotency_key="chain-root", correlation_id=chain)
        child = c.emit_and_wait(InventoryAdjusted(sku="C1", delta=-1), stream_for("C1"), idempotency_key="chain-1",
                                correlation_id=chain, causation_id=root.event_id)
        grand = c.emit_and_wait(InventoryAdjusted(sku="C2", delta=2), stream_for("C2"), idempotency_key="chain-2",
                                correlation_id=chain, causation_id=child.event_id)
        stray = c.emit_and_wait(InventoryAdjusted(sku="C3", delta=3), stream_for("C3"), idempotency_key="chain-3",
                                correlation_id=uuid.uuid4(), causation_id=grand.event_id)
        facts["chain_ids"] = {str(r.event_id) for r in (root, child, grand, stray)}
        # A conflict and a duplicate around the root write; a write under a lease.
        conflict = c.emit_and_wait(InventoryAdjusted(sku="C1", delta=9), stream_for("C1"), expected_version=0)
        assert conflict.status is Outcome.CONFLICT
        dup = c.emit_and_wait(InventoryUpdated(sku="C1", quantity=5), stream_for("C1"), idempotency_key="chain-root",
                              correlation_id=chain)
        assert dup.status is Outcome.DUPLICATE
        with coord.lease("inventory:L1", agent_id="order-agent", ttl=10.0) as lease:
            leased = c.emit_and_wait(InventoryUpdated(sku="L1", quantity=1), stream_for("L1"), lease=lease)
        assert leased.status is Outcome.COMMITTED
        facts["leased"], facts["root"] = leased, root
    return facts


def test_each_query_form(settings: Settings, written: dict[str, Any]) -> None:
    url = settings.require_database()
    with psycopg.connect(url, autocommit=True) as conn:
        by_stream = all_pages(conn, HistoryQuery.create(stream=stream_for("S1"), limit=5))
        assert [e["position"] for e in by_stream] == truth(url, "stream = %s", (stream_for("S1"),))
        assert len(by_stream) == 18 and {e["agent_id"] for e in by_stream} == set(AGENTS)
        assert [e["version"] for e in by_stream] == list(range(1, 19))
        by_agent = all_pages(conn, HistoryQuery.create(agent="pricing-agent", limit=4))
        assert [e["position"] for e in by_agent] == truth(url, "agent_id = %s", ("pricing-agent",))
        by_type = all_pages(conn, HistoryQuery.create(type="PriceSet", limit=7))
        assert [e["position"] for e in by_type] == truth(url, "type = %s", ("PriceSet",))
        assert len(by_type) == 18
        lo, hi = by_stream[3]["position"], by_stream[10]["position"]
        by_pos = all_pages(conn, HistoryQuery.create(from_position=lo, to_position=hi, limit=3))
        assert [e["position"] for e in by_pos] == list(range(lo, hi + 1))
        since = datetime.fromisoformat(by_stream[5]["recorded_at"])
        until = datetime.fromisoformat(by_stream[12]["recorded_at"])
        by_time = all_pages(conn, HistoryQuery.create(since=since.isoformat(), until=until.isoformat(), limit=10))
        assert [e["position"] for e in by_time] == truth(url, "recorded_at >= %s AND recorded_at < %s",
                                                         (since, until))
        assert by_time and by_stream[5]["position"] in [e["position"] for e in by_time]
        combined = all_pages(conn, HistoryQuery.create(stream=stream_for("S1"), agent="order-agent", limit=2))
        assert [e["position"] for e in combined] == truth(url, "stream = %s AND agent_id = %s",
                                                          (stream_for("S1"), "order-agent"))
        chain = all_pages(conn, HistoryQuery.create(correlation=str(written["chain"]), limit=2))
        # The root, its child, grandchild, and the event the grandchild caused (other correlation id);
        # the duplicate of the root committed nothing, so it is not an event.
        assert {e["event_id"] for e in chain} == written["chain_ids"]
        assert len(chain) == 4


def test_outcomes_and_lock_events_around_writes(settings: Settings, written: dict[str, Any]) -> None:
    with psycopg.connect(settings.require_database(), autocommit=True) as conn:
        page = query(conn, HistoryQuery.create(stream=stream_for("C1")))
        root = page.rows[0]
        assert root.event["event_id"] == str(written["root"].event_id)
        statuses = sorted((o["status"], o["reason_code"]) for o in root.outcomes)
        # The duplicate of the root, and the conflict decided while C1 stood at version 1... or 2.
        assert ("duplicate", "duplicate") in statuses
        around_all = [o for r in page.rows for o in r.outcomes]
        assert ("conflict", "version_conflict") in {(o["status"], o["reason_code"]) for o in around_all}
        leased = query(conn, HistoryQuery.create(stream=stream_for("L1"))).rows[0]
        assert leased.event["lease_resource"] == "inventory:L1"
        kinds = [e["type"] for e in leased.lock_events]
        assert kinds[0] == "LeaseGranted" and "LeaseReleased" in kinds
        assert all(e["fencing_token"] == leased.event["fencing_token"] for e in leased.lock_events)


def test_write_map(settings: Settings, written: dict[str, Any]) -> None:
    with psycopg.connect(settings.require_database(), autocommit=True) as conn:
        rows = writers(conn)
    by = {(r["resource"], r["agent_id"]): r for r in rows}
    assert {a for (res, a) in by if res == "inventory"} == set(AGENTS)
    assert by[("price", "pricing-agent")]["writes"] == 6
    assert by[("inventory", "order-agent")]["under_lease"] == 1
    assert not any(res.startswith(("lease", "agent")) for res, _ in by)
    assert by[("inventory", "order-agent")]["first_write"] <= by[("inventory", "order-agent")]["last_write"]


def test_pages_never_repeat_or_skip_while_writes_continue(database_url: str) -> None:
    """A writer appends to the paged stream (and others) while a reader pages through it."""
    stop = threading.Event()

    def write() -> None:
        with psycopg.connect(database_url) as conn:
            i = 0
            while not stop.is_set():
                with conn.transaction(), conn.cursor() as cur:
                    eventlog.append_direct(cur, [
                        DirectEvent(stream="orders-A" if i % 2 else "orders-B", agent_id=f"w{i % 3}",
                                    event=InventoryAdjusted(sku="x", delta=i)) for _ in range(3)])
                i += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        seen: list[int] = []
        with psycopg.connect(database_url, autocommit=True) as conn:
            after = None
            deadline = time.monotonic() + 60
            while len(seen) < 60 and time.monotonic() < deadline:
                page = query(conn, HistoryQuery.create(stream="orders-A", limit=4, after=after), context=False)
                seen += [r.event["position"] for r in page.rows]
                after = page.next_cursor
                if not page.more:
                    time.sleep(0.005)
    finally:
        stop.set()
        writer.join(10)
    assert len(seen) >= 60, "the writer did not keep writing"
    assert len(seen) == len(set(seen)), "a page repeated a row"
    assert seen == sorted(seen)
    with psycopg.connect(database_url) as conn:
        expected = [int(r[0]) for r in conn.execute(
            "SELECT position FROM events WHERE stream = 'orders-A' AND position <= %s ORDER BY position",
            (seen[-1],)).fetchall()]
    assert seen == expected, "a page skipped a row"


@pytest.mark.parametrize("kwargs, reason", [
    ({"limit": 0}, "limit"), ({"limit": MAX_LIMIT + 1}, "limit"), ({"from_position": -1}, "from_position"),
    ({"from_position": 10, "to_position": 5}, "below"), ({"from_position": 2**63}, "from_position"),
    ({"since": "yesterday"}, "ISO 8601"), ({"since": "2026-01-01T00:00:00"}, "time zone"),
    ({"since": "2026-01-02T00:00:00+00:00", "until": "2026-01-01T00:00:00+00:00"}, "before"),
    ({"since": "1900-01-01T00:00:00+00:00", "until": "2026-01-01T00:00:00+00:00"}, "narrow"),
    ({"correlation": "not-a-uuid"}, "UUID"), ({"stream": "x" * 201}, "stream"), ({"agent": "a\x00b"}, "agent"),
    ({"after": "garbage!"}, "cursor"),
])
def test_bad_parameters_are_refused_with_the_reason(kwargs: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidQueryError, match=reason):
        HistoryQuery.create(**kwargs)


def test_cursor_is_bound_to_its_filters() -> None:
    q = HistoryQuery.create(stream="a-1")
    token = q.next_cursor(42)
    assert HistoryQuery.create(stream="a-1", after=token).after == 42
    assert HistoryQuery.create(stream="a-1", limit=7, after=token).after == 42  # page size may change
    with pytest.raises(InvalidQueryError, match="other filters"):
        HistoryQuery.create(stream="a-2", after=token)


def test_stream_category() -> None:
    assert stream_category("inventory-sku-42") == "inventory-sku"
    assert stream_category("inventory-S1") == "inventory"
    assert stream_category("orders") == "orders"
    assert stream_category("-x") == "-x"
