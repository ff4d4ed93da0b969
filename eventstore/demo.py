"""``eventstore demo``: the founding document's lost-update scenario, first naive, then through the backbone.

Stock is 5. An order agent sells 3 and a supplier-feed agent applies an adjustment of -1; both read
5 before either writes. Written straight into a shared table, the last write wins and the stock is
wrong. Through the backbone, each write carries the version it read; one agent gets CONFLICT,
re-reads, decides again, and the stock ends at 1.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg

from eventstore.client import AgentClient
from eventstore.events import Event
from eventstore.examples.inventory import InventoryAdjusted, InventoryUpdated, stream_for
from eventstore.outcomes import Outcome
from eventstore.projector import Projector
from eventstore.settings import Settings

SKU = "A1"
START = 5
SALE = 3
ADJUSTMENT = -1


def naive(database_url: str, say: Callable[[str], None]) -> int:
    """Both agents read, then write the shared table directly: the classic lost update."""
    barrier = threading.Barrier(2)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS demo_naive_stock (sku text PRIMARY KEY, quantity int)")
        conn.execute("INSERT INTO demo_naive_stock VALUES (%s, %s) ON CONFLICT (sku) DO UPDATE "
                     "SET quantity = EXCLUDED.quantity", (SKU, START))

    def agent(name: str, change: int, write_order: threading.Event | None, wait_for: threading.Event | None) -> None:
        with psycopg.connect(database_url, autocommit=True) as c:
            row = c.execute("SELECT quantity FROM demo_naive_stock WHERE sku = %s", (SKU,)).fetchone()
            assert row is not None
            seen = int(row[0])
            barrier.wait()  # both have read before either writes
            if wait_for is not None:
                wait_for.wait(5)
            c.execute("UPDATE demo_naive_stock SET quantity = %s WHERE sku = %s", (seen + change, SKU))
            say(f"  {name:<15} read {seen}, wrote {seen + change}")
            if write_order is not None:
                write_order.set()

    first_done = threading.Event()
    threads = [
        threading.Thread(target=agent, args=("order-agent", -SALE, first_done, None)),
        threading.Thread(target=agent, args=("supplier-feed", ADJUSTMENT, None, first_done)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT quantity FROM demo_naive_stock WHERE sku = %s", (SKU,)).fetchone()
    assert row is not None
    return int(row[0])


def _agent_loop(client: AgentClient, stream: str, decide: Callable[[int], Event], barrier: threading.Barrier,
                say: Callable[[str], None]) -> None:
    """Read the committed state, decide, emit with the version read; on CONFLICT re-read and decide again."""
    first = True
    for _attempt in range(5):
        events = client.read_stream(stream)
        version = events[-1].version if events else 0
        quantity = _replay(events)
        if first:
            barrier.wait()  # both agents have read version 1 (stock 5) before either emits
            first = False
        event = decide(quantity)
        r = client.emit_and_wait(event, stream, expected_version=version, timeout=15)
        say(f"  {client.agent_id:<15} read v{version} (stock {quantity}), emitted {_describe(event)} "
            f"-> {r.status.value.upper()}"
            + (f" (stream is at v{r.current_version})" if r.status is Outcome.CONFLICT else f" as v{r.version}"))
        if r.status is not Outcome.CONFLICT:
            return


def _replay(events: list[Any]) -> int:
    q = 0
    for e in events:
        q = int(e.payload["quantity"]) if e.type == "InventoryUpdated" else q + int(e.payload["delta"])
    return q


def _describe(event: Event) -> str:
    return f"{event.event_type}({', '.join(f'{k}={v}' for k, v in event.model_dump().items())})"


def through_backbone(settings: Settings, say: Callable[[str], None]) -> int:
    stream = stream_for(SKU)
    with Projector(settings), AgentClient("order-agent", settings) as order, \
            AgentClient("supplier-feed", settings) as supplier:
        r = supplier.emit_and_wait(InventoryUpdated(sku=SKU, quantity=START), stream, expected_version=0,
                                   idempotency_key="demo-restock-1", timeout=30)
        say(f"  supplier-feed   set stock to {START} -> {r.status.value.upper()} as v{r.version}")
        barrier = threading.Barrier(2)
        threads = [
            threading.Thread(target=_agent_loop, args=(
                order, stream, lambda q: InventoryAdjusted(sku=SKU, delta=-SALE), barrier, say)),
            threading.Thread(target=_agent_loop, args=(
                supplier, stream, lambda q: InventoryUpdated(sku=SKU, quantity=q + ADJUSTMENT), barrier, say)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        say("\n  event history of stream " + stream + ":")
        say(f"  {'pos':>4} {'ver':>4}  {'recorded at (database clock)':<32} {'agent':<15} event")
        for e in order.read_stream(stream):
            body = ", ".join(f"{k}={v}" for k, v in e.payload.items())
            say(f"  {e.position:>4} {e.version:>4}  {e.recorded_at.isoformat():<32} {e.agent_id:<15} "
                f"{e.type}({body})")
        db, _ = settings.require_servers()
        with psycopg.connect(db) as conn:
            row = conn.execute("SELECT quantity, version FROM inventory WHERE sku = %s", (SKU,)).fetchone()
        assert row is not None
        return int(row[0])


def run(settings: Settings, out: Callable[[str], None] = print) -> tuple[int, int]:
    """Run both halves; returns (naive final stock, backbone final stock)."""
    lock = threading.Lock()

    def say(line: str) -> None:  # agents report from their own threads
        with lock:
            out(line)

    db, _ = settings.require_servers()
    correct = START - SALE + ADJUSTMENT
    say(f"Stock of {SKU} is {START}. The order agent sells {SALE}; the supplier feed adjusts by {ADJUSTMENT}. "
        f"Correct result: {correct}.\n")
    say("1) Naive: both agents read the shared table, then write it directly")
    bad = naive(db, say)
    say(f"  final stock {bad}: wrong by {bad - correct} ({'lost update' if bad != correct else 'lucky'})\n")
    say("2) Through the backbone: events with the version each agent read")
    good = through_backbone(settings, say)
    say(f"\n  final stock in the read model: {good} "
        f"({'correct' if good == correct else 'WRONG by ' + str(good - correct)})")
    return bad, good
