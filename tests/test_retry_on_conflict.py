"""``retry_on_conflict`` (issue 13): on a new stream ``decide`` sees None and the event goes out with
expected_version=0; on a busy stream ten concurrent agents, each deciding from its own local view,
end in the state the log folds to, with no error other than the documented outcomes. Sync and asyncio.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from consumers.views import StreamState
from eventstore.core.events import Event
from eventstore.core.outcomes import EmitResult, Outcome
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryAdjusted, InventoryUpdated, quantity_reducer, stream_for
from eventstore.projection.projector import Projector
from eventstore.sdk.aio import AsyncAgentClient
from eventstore.sdk.client import AgentClient
from tests.fix_projector import scalar

AGENTS = 10
STOCK = 6  # fewer units than agents: some agents must see "out of stock" and give up


def fold(client: AgentClient, stream: str) -> Any:
    """The state the committed log of ``stream`` folds to (the truth the views must match)."""
    return functools.reduce(quantity_reducer, client.read_stream(stream), None)


def sell_one(seen: list[int | None]) -> Callable[[StreamState | None], Event | None]:
    """A decision on the view's state: sell one unit while there is stock, else give up."""

    def decide(state: StreamState | None) -> Event | None:
        seen.append(None if state is None else state.version)
        if state is None or int(state.state) <= 0:
            return None
        return InventoryAdjusted(sku=state.stream.removeprefix("inventory-"), delta=-1)

    return decide


def test_new_stream_decides_on_none_and_expects_version_zero(settings: Settings, projector: Projector) -> None:
    sku = f"NEW-{uuid.uuid4().hex[:8]}"
    stream = stream_for(sku)
    seen: list[int | None] = []
    with AgentClient("decider", settings) as c, AgentClient("intruder", settings) as other:
        c.follow("inventory-", reducer=quantity_reducer)

        def decide(state: StreamState | None) -> Event | None:
            seen.append(None if state is None else state.version)
            if state is None:
                # Someone else creates the stream between our read and our write: an emit made with
                # expected_version=0 must now conflict (anything else would overwrite their write).
                assert other.emit_and_wait(InventoryUpdated(sku=sku, quantity=10), stream).status is Outcome.COMMITTED
                return InventoryUpdated(sku=sku, quantity=1)
            return InventoryAdjusted(sku=sku, delta=-1)

        result = c.retry_on_conflict(stream, decide, timeout=30)
        assert result is not None and result.status is Outcome.COMMITTED and result.version == 2
        assert seen == [None, 1]  # first on no state (a new stream), then on the intruder's version
        assert c.view is not None
        last = c.view.wait_for_version(stream, 2, 30)
        assert last is not None and fold(c, stream) == 9 == last.state


def test_new_stream_without_contention_commits_version_one(settings: Settings, projector: Projector) -> None:
    sku = f"FRESH-{uuid.uuid4().hex[:8]}"
    stream = stream_for(sku)
    with AgentClient("fresh", settings) as c:
        c.follow("inventory-")
        result = c.retry_on_conflict(stream, lambda st: InventoryUpdated(sku=sku, quantity=3) if st is None else None)
        assert result is not None and result.status is Outcome.COMMITTED and result.version == 1


def _check_busy_outcomes(results: list[EmitResult | None], seen: list[int | None], final: Any, logged: Any,
                         view_state: Any, committed_rows: int) -> None:
    committed = [r for r in results if r is not None and r.status is Outcome.COMMITTED]
    gave_up = [r for r in results if r is None]
    # Attempts are generous, so no agent runs out of them: every call either sold a unit or saw no stock.
    assert len(committed) == STOCK and len(gave_up) == AGENTS - STOCK, results
    assert sorted(r.version for r in committed if r.version is not None) == list(range(2, STOCK + 2))
    assert final == logged == view_state == 0
    assert committed_rows == STOCK + 1
    assert len(seen) > AGENTS  # there was contention: some decisions were taken again after a conflict


def test_ten_agents_on_a_busy_stream_end_in_the_fold_of_the_log(settings: Settings, projector: Projector) -> None:
    sku = f"BUSY-{uuid.uuid4().hex[:8]}"
    stream = stream_for(sku)
    seen: list[int | None] = []
    with ThreadPoolExecutor(AGENTS) as pool:
        clients = list(pool.map(lambda i: AgentClient(f"seller-{i}", settings), range(AGENTS)))
    try:
        assert clients[0].emit_and_wait(InventoryUpdated(sku=sku, quantity=STOCK), stream).status is Outcome.COMMITTED
        start = threading.Barrier(AGENTS)

        def agent(c: AgentClient) -> EmitResult | None:
            c.follow("inventory-", reducer=quantity_reducer)
            start.wait(60)
            return c.retry_on_conflict(stream, sell_one(seen), attempts=AGENTS * 3, timeout=30)

        with ThreadPoolExecutor(AGENTS) as pool:
            results = list(pool.map(agent, clients))  # any exception (undocumented error) fails the test
        view = clients[0].view
        assert view is not None
        last = view.wait_for_version(stream, STOCK + 1, 30)
        _check_busy_outcomes(results, seen, scalar(settings.require_database(),
                                                   "SELECT quantity FROM inventory WHERE sku = %s", (sku,)),
                             fold(clients[0], stream), None if last is None else last.state,
                             clients[0].stream_version(stream))
    finally:
        for c in clients:
            c.close()


def test_async_retry_on_conflict_new_and_busy_stream(settings: Settings, projector: Projector) -> None:
    sku = f"ABUSY-{uuid.uuid4().hex[:8]}"
    stream = stream_for(sku)
    seen: list[int | None] = []

    async def main() -> None:
        clients = [AsyncAgentClient(f"aseller-{i}", settings) for i in range(AGENTS)]
        await asyncio.gather(*(c.open() for c in clients))
        try:
            first = clients[0]
            await asyncio.gather(*(c.follow("inventory-", reducer=quantity_reducer) for c in clients))
            # A new stream: decide sees None, the event goes out with expected_version=0.
            created = await first.retry_on_conflict(
                stream, lambda st: InventoryUpdated(sku=sku, quantity=STOCK) if st is None else None)
            assert created is not None and created.status is Outcome.COMMITTED and created.version == 1
            results = await asyncio.gather(*(c.retry_on_conflict(stream, sell_one(seen), attempts=AGENTS * 3,
                                                                 timeout=30) for c in clients))
            assert first.view is not None
            last = first.view.wait_for_version(stream, STOCK + 1, 30)
            _check_busy_outcomes(list(results), seen, scalar(settings.require_database(),
                                                             "SELECT quantity FROM inventory WHERE sku = %s", (sku,)),
                                 fold(first.sync, stream), None if last is None else last.state,
                                 await first.stream_version(stream))
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    asyncio.run(main())
