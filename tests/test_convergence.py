"""Property: whatever the interleaving of many agents' emits, the live read model, every
subscriber's local view and a view rebuilt from the committed topic hold the same state (promise 6)."""

from __future__ import annotations

import threading
import uuid

import psycopg
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from consumers import LocalView, Subscriber
from eventstore import AgentClient, Projector
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryAdjusted, InventoryUpdated, quantity_reducer, stream_for
from eventstore.postgres.eventlog import head_position, read_all

AGENTS = 6
op = st.tuples(st.integers(0, 3), st.sampled_from(["set", "add"]), st.integers(-5, 20), st.booleans())
plans = st.lists(st.lists(op, max_size=8), min_size=AGENTS, max_size=AGENTS)


@hsettings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=plans)
def test_live_model_subscriber_views_and_rebuild_agree(settings: Settings, projector: Projector,
                                                       plan: list[list[tuple[int, str, int, bool]]]) -> None:
    db = settings.require_database()
    prefix = f"P{uuid.uuid4().hex[:6]}-"
    views = [LocalView(quantity_reducer) for _ in range(2)]
    subs = [Subscriber(f"live-{i}-{prefix}", view=v, settings=settings).start() for i, v in enumerate(views)]
    clients = [AgentClient(f"agent-{i}", settings) for i in range(AGENTS)]
    try:
        barrier = threading.Barrier(AGENTS)
        errors: list[BaseException] = []
        decided: list[int] = []

        def run(client: AgentClient, ops: list[tuple[int, str, int, bool]]) -> None:
            try:
                barrier.wait(30)
                for sku_i, kind, n, check in ops:
                    sku = f"{prefix}{sku_i}"
                    event = (InventoryUpdated(sku=sku, quantity=abs(n)) if kind == "set"
                             else InventoryAdjusted(sku=sku, delta=n))
                    expected = client.stream_version(stream_for(sku)) if check else None
                    r = client.emit_and_wait(event, stream_for(sku), expected_version=expected, timeout=30)
                    assert r.status.value in ("committed", "conflict"), r
                    decided.append(1)  # list.append is atomic across threads
            except BaseException as e:  # reported by the test thread
                errors.append(e)

        threads = [threading.Thread(target=run, args=(c, ops)) for c, ops in zip(clients, plan, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert len(decided) == sum(len(ops) for ops in plan)
        with psycopg.connect(db) as conn, conn.cursor() as cur:
            head = head_position(cur)
            events = [e for e in read_all(cur, 0, 1_000_000) if e.stream.startswith(stream_for(prefix))]
            live = {f"inventory-{sku}": q for sku, q in
                    cur.execute("SELECT sku, quantity FROM inventory WHERE sku LIKE %s", (prefix + "%",))}
        sequential: dict[str, int] = {}
        for e in events:
            sequential[e.stream] = quantity_reducer(sequential.get(e.stream), e)
        rebuilt = LocalView(quantity_reducer)
        with Subscriber(f"rebuild-{prefix}", view=rebuilt, settings=settings, from_beginning=True,
                        catch_up_from_db=False) as rebuild:
            rebuilt.wait_for_position(head, 30)
        assert rebuild.backfilled == 0  # rebuilt from the committed topic alone
        for v in views:
            v.wait_for_position(head, 30)

        def mine(view: LocalView) -> dict[str, int]:
            return {s: x.state for s, x in view.streams().items() if s.startswith(stream_for(prefix))}

        assert live == sequential
        assert mine(rebuilt) == sequential
        for v in views:
            assert mine(v) == sequential
    finally:
        for s in subs:
            s.stop()
        for c in clients:
            c.close()
