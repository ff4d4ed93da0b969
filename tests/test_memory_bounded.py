"""Memory stays bounded per event (issue 11, aim 6): after warm-up, a projector with its publisher, a
subscriber with a local view and an agent, all in this process against the real servers, keep no Python
object per event. Counted without timing: Python's allocated blocks and live objects by type after a
collection, before and after ``MORE`` events; a leak of one small object per event adds ``MORE`` blocks.
pydantic_core's JSON parser (used by the committed-message decoders) keeps a process-wide cache of up to
16,384 short strings, bounded but filled by the first thousands of events: the test fills it first.
``eventstore bench memory`` shows the same for RSS over 1,000,000 events (docs/perf-memory.md)."""

from __future__ import annotations

import gc
import json
import sys
import time
import uuid
from collections import Counter

import pydantic_core

from consumers.subscriber import Subscriber
from consumers.views import LocalView
from eventstore import AgentClient, Outcome, Projector
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryAdjusted, quantity_reducer, stream_for
from tests.fix_projector import wait_until

SKUS = 50
CHUNK = 2_000
WARM = 2_000
MORE = 8_000
TOLERANCE = 0.25  # blocks per event: one leaked object per event is 1.0 or more


def _send(client: AgentClient, start: int, n: int) -> None:
    for first in range(start, start + n, CHUNK):
        items = [(InventoryAdjusted(sku=f"B{i % SKUS}", delta=1), stream_for(f"B{i % SKUS}"))
                 for i in range(first, first + CHUNK)]
        results = [h.result(120) for h in client.emit_many(items)]
        assert {r.status for r in results} == {Outcome.COMMITTED}


def _fill_string_cache() -> None:
    """Fill pydantic_core's string cache (a fixed table of 16,384 slots; a new string replaces the one in
    its slot), so that the strings of the events measured replace entries instead of adding them."""
    pydantic_core.from_json(json.dumps([uuid.uuid4().hex for _ in range(250_000)]))


def _settle(projector: Projector, sub: Subscriber, head: int) -> tuple[int, Counter[str]]:
    publisher = projector.publisher
    assert publisher is not None
    wait_until(lambda: publisher.position >= head and sub.last >= head, 120, f"publisher and subscriber at {head}")
    time.sleep(0.5)  # let the threads finish the batch in hand and go back to polling (not a timing claim)
    gc.collect()
    return sys.getallocatedblocks(), Counter(type(o).__name__ for o in gc.get_objects())


def test_projector_publisher_and_subscriber_keep_no_object_per_event(settings: Settings, projector: Projector) -> None:
    sub = Subscriber("bounded", view=LocalView(quantity_reducer), settings=settings).start()
    try:
        with AgentClient("bounded-agent", settings) as client:
            _send(client, 0, WARM)
            _fill_string_cache()
            blocks0, types0 = _settle(projector, sub, WARM)
            _send(client, WARM, MORE)
            blocks1, types1 = _settle(projector, sub, WARM + MORE)
            assert len(client._pending) == 0  # every outcome resolved: no handle kept
        assert projector.publisher is not None and projector.publisher.local.held == 0
        assert len(sub.view._streams) == SKUS  # the view holds one state per stream, not per event
    finally:
        sub.stop()
    sub.raise_if_failed()
    grown = types1 - types0
    assert blocks1 - blocks0 < MORE * TOLERANCE, (blocks0, blocks1, grown.most_common(10))
    assert all(n < MORE // 4 for n in grown.values()), grown.most_common(10)
