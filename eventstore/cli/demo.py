"""``eventstore demo``: the founding document's lost-update scenario, first naive, then through the backbone.

Then the first scenario of the document: an order agent asked while a restock is in flight waits on
its local view of committed events and sells as soon as the restock commits.

Stock is 5. An order agent sells 3 and a supplier-feed agent applies an adjustment of -1; both read
5 before either writes. Written straight into a shared table, the last write wins and the stock is
wrong. Through the backbone, each write carries the version it read; one agent gets CONFLICT,
re-reads, decides again, and the stock ends at 1.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from eventstore.core.errors import StorageError
from eventstore.core.events import Event
from eventstore.core.outcomes import Outcome
from eventstore.core.settings import Settings
from eventstore.discovery import dev_credential
from eventstore.examples.inventory import (
    STREAM_PREFIX,
    InventoryAdjusted,
    InventoryUpdated,
    quantity_reducer,
    stream_for,
)
from eventstore.postgres.agents import register as register_agent
from eventstore.postgres.connection import connect
from eventstore.projection.projector import Projector
from eventstore.sdk.client import AgentClient

START = 5
SALE = 3
ADJUSTMENT = -1
AGENTS = ("order-agent", "supplier-feed")
_credentials: dict[tuple[str, str], str] = {}


def _client(name: str, settings: Settings) -> AgentClient:
    """The demo's agents register themselves (or use the credential a running `eventstore dev` gave them),
    so the demo needs no `eventstore agents add` first."""
    db = settings.require_database()
    cred = _credentials.get((db, name)) or dev_credential(name)
    if cred is None:
        with connect(db) as conn, conn.cursor() as cur:
            cred = str(register_agent(cur, name))
            conn.commit()
        _credentials[(db, name)] = cred
    return AgentClient(name, settings, credential=cred)


def _quantity(row: tuple[object, ...] | None, what: str) -> int:
    if row is None:
        raise StorageError(f"the demo's {what} row is missing")
    return int(str(row[0]))


def naive(database_url: str, say: Callable[[str], None], sku: str = "A1") -> int:
    """Both agents read, then write the shared table directly: the classic lost update."""
    barrier = threading.Barrier(2)
    with connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS demo_naive_stock (sku text PRIMARY KEY, quantity int)")
        conn.execute("INSERT INTO demo_naive_stock VALUES (%s, %s) ON CONFLICT (sku) DO UPDATE "
                     "SET quantity = EXCLUDED.quantity", (sku, START))

    def agent(name: str, change: int, write_order: threading.Event | None, wait_for: threading.Event | None) -> None:
        with connect(database_url, autocommit=True) as c:
            seen = _quantity(c.execute("SELECT quantity FROM demo_naive_stock WHERE sku = %s", (sku,)).fetchone(),
                             "naive stock")
            barrier.wait()  # both have read before either writes
            if wait_for is not None:
                wait_for.wait(5)
            c.execute("UPDATE demo_naive_stock SET quantity = %s WHERE sku = %s", (seen + change, sku))
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
    with connect(database_url) as conn:
        return _quantity(conn.execute("SELECT quantity FROM demo_naive_stock WHERE sku = %s", (sku,)).fetchone(),
                         "naive stock")


def _agent_loop(client: AgentClient, stream: str, decide: Callable[[int], Event], barrier: threading.Barrier,
                say: Callable[[str], None]) -> None:
    """Read the committed state, decide, emit with the version read; on CONFLICT re-read and decide again."""
    first = True
    for _attempt in range(5):
        events = client.read_stream(stream)
        version = events[-1].version if events else 0
        quantity = 0
        for e in events:
            quantity = quantity_reducer(quantity, e)
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


def _describe(event: Event) -> str:
    return f"{event.event_type}({', '.join(f'{k}={v}' for k, v in event.model_dump().items())})"


def through_backbone(settings: Settings, say: Callable[[str], None], sku: str = "A1") -> int:
    stream = stream_for(sku)
    with Projector(settings) as projector, _client("order-agent", settings) as order, \
            _client("supplier-feed", settings) as supplier:
        projector.ready.wait(30)
        r = supplier.emit_and_wait(InventoryUpdated(sku=sku, quantity=START), stream, expected_version=0,
                                   idempotency_key=f"demo-restock-{sku}", timeout=30)
        say(f"  supplier-feed   set stock to {START} -> {r.status.value.upper()} as v{r.version}")
        barrier = threading.Barrier(2)
        threads = [
            threading.Thread(target=_agent_loop, args=(
                order, stream, lambda q: InventoryAdjusted(sku=sku, delta=-SALE), barrier, say)),
            threading.Thread(target=_agent_loop, args=(
                supplier, stream, lambda q: InventoryUpdated(sku=sku, quantity=q + ADJUSTMENT), barrier, say)),
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
        with connect(settings.require_database()) as conn:
            return _quantity(conn.execute("SELECT quantity FROM inventory WHERE sku = %s", (sku,)).fetchone(),
                             "inventory read model")


def restock_in_flight(settings: Settings, say: Callable[[str], None], sku: str = "B7") -> tuple[int, float]:
    """The founding document's first scenario: stock 0, a restock of 3 in flight. The order agent
    follows committed events, so it waits for the restock instead of reading in-flight state, and
    sells as soon as the restock commits. Returns (units sold, ms from restock commit to the sale decision)."""
    stream = stream_for(sku)
    committed_at: list[float] = []
    with Projector(settings) as projector, _client("order-agent", settings) as order, \
            _client("supplier-feed", settings) as supplier:
        projector.ready.wait(30)
        view = order.follow(STREAM_PREFIX, reducer=quantity_reducer)
        st = view.get(stream)
        say(f"  order-agent     a customer asks for {sku}; committed stock is {0 if st is None else st.state}")

        def restock() -> None:
            r = supplier.emit_and_wait(InventoryUpdated(sku=sku, quantity=3), stream, expected_version=0,
                                       idempotency_key=f"demo-restock-{sku}", timeout=30)
            committed_at.append(time.monotonic())
            say(f"  supplier-feed   restock of 3 -> {r.status.value.upper()} as v{r.version}")

        threading.Timer(1.0, restock).start()
        say("  order-agent     a restock may be in flight: waiting (up to 10s) for committed stock > 0")
        seen = view.wait_until(stream, lambda s: bool(s.state), timeout=10)
        seen_at = time.monotonic()
        r = order.retry_on_conflict(stream, lambda s: InventoryAdjusted(sku=sku, delta=-1)
                                    if s is not None and s.state >= 1 else None)
        lag_ms = (seen_at - committed_at[0]) * 1000 if committed_at else 0.0
        say(f"  order-agent     saw stock {seen.state} at v{seen.version} through its subscription, "
            f"{max(lag_ms, 0):.0f} ms after the supplier saw its restock confirmed; sold 1 -> "
            f"{'nothing' if r is None else r.status.value.upper()}")
        return (1 if r is not None and r.ok else 0), lag_ms


def run(settings: Settings, out: Callable[[str], None] = print, run_id: str | None = None) -> tuple[int, int]:
    """Run both halves; returns (naive final stock, backbone final stock). ``run_id`` (default: fresh)
    suffixes this run's SKUs and keys; pass ``""`` for the bare names A1 and B7."""
    if run_id is None:
        run_id = uuid.uuid4().hex[:4]
    lock = threading.Lock()

    def say(line: str) -> None:  # agents report from their own threads
        with lock:
            out(line)

    db = settings.require_database()
    # Streams, rows and idempotency keys of their own, so every run gives the same answer, also when
    # run again and again against the same servers (an `eventstore dev` database keeps its history).
    run = f"-{run_id}" if run_id else ""
    sku_a, sku_b = f"A1{run}", f"B7{run}"
    correct = START - SALE + ADJUSTMENT
    say(f"Stock of {sku_a} is {START}. The order agent sells {SALE}; the supplier feed adjusts by {ADJUSTMENT}. "
        f"Correct result: {correct}.\n")
    say("1) Naive: both agents read the shared table, then write it directly")
    bad = naive(db, say, sku_a)
    say(f"  final stock {bad}: wrong by {bad - correct} ({'lost update' if bad != correct else 'lucky'})\n")
    say("2) Through the backbone: events with the version each agent read")
    good = through_backbone(settings, say, sku_a)
    say(f"\n  final stock in the read model: {good} "
        f"({'correct' if good == correct else 'WRONG by ' + str(good - correct)})\n")
    say("3) Reading in-flight state: the order agent asks while a restock of 3 is still in flight")
    sold, _lag = restock_in_flight(settings, say, sku_b)
    say(f"  the customer {'got the item' if sold else 'was turned away'}")
    return bad, good
