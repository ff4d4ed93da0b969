"""Coalesced lone emits (issue 11, aim 3, docs/perf-latency.md "Round 2"): with the send-at-once rule off,
lone emits wait out linger.ms and share produce requests, and every outcome still arrives exactly once;
the growth benchmark's window arithmetic."""

from __future__ import annotations

import math
import time

from eventstore import AgentClient, Outcome, Projector
from eventstore.bench.brokergrowth import Windows, _p
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryAdjusted, stream_for
from tests.fix_projector import scalar


def test_coalesced_lone_emits_all_commit_once(settings: Settings, projector: Projector) -> None:
    lingering = settings.replace(kafka_config={**settings.kafka_config, "linger.ms": 20})
    with AgentClient("coalescing", lingering) as client:
        client.sparse_after = math.inf  # every emit left to linger.ms
        handles = []
        for i in range(60):
            handles.append(client.emit(InventoryAdjusted(sku=f"C{i % 6}", delta=1), stream_for(f"C{i % 6}")))
            time.sleep(0.002)  # a steady trickle of lone emits, as at 500/s
        results = [h.result(60) for h in handles]
    assert [r.status for r in results] == [Outcome.COMMITTED] * 60
    assert sorted(r.version or 0 for r in results) == sorted(v for _ in range(6) for v in range(1, 11))
    total = scalar(settings.require_database(), "SELECT sum(quantity) FROM inventory WHERE sku LIKE 'C%%'")
    assert total == 60


def test_windows_merge_by_position_and_percentiles() -> None:
    a = Windows(latencies=[[0.010, 0.020], [0.030]], tansu_us=[100.0, 200.0], failed=1)
    b = Windows(latencies=[[0.040], [0.050], [0.060]], tansu_us=[150.0, 250.0, 300.0])
    a.merge(b)
    assert a.latencies == [[0.010, 0.020, 0.040], [0.030, 0.050], [0.060]]
    assert a.tansu_us == [100.0, 200.0, 150.0, 250.0, 300.0] and a.failed == 1
    assert _p([0.030, 0.010, 0.020], 50) == 20.0
    assert math.isnan(_p([], 50))
