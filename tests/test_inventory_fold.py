"""The inventory read model's batch fold (pure): one change per SKU that means the same as the events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from eventstore.core.records import RecordedEvent
from eventstore.examples.inventory import SkuChange, fold


def rec(version: int, sku: str, kind: str, n: int) -> RecordedEvent:
    payload: dict[str, object] = {"sku": sku, "quantity": n} if kind == "set" else {"sku": sku, "delta": n}
    eid = uuid.uuid4()
    return RecordedEvent(position=version, event_id=eid, stream=f"inventory-{sku}", version=version,
                         type="InventoryUpdated" if kind == "set" else "InventoryAdjusted", schema_version=1,
                         payload=payload, agent_id="a", idempotency_key=str(version), correlation_id=eid,
                         causation_id=None, occurred_at=None, recorded_at=datetime.now(UTC))


def test_set_then_adjust_folds_into_one_change() -> None:
    changes = fold([rec(1, "A", "add", 4), rec(2, "A", "set", 10), rec(3, "A", "add", -3), rec(4, "B", "add", 2)])
    assert changes == [SkuChange("A", 10, -3, 3), SkuChange("B", None, 2, 4)]


ops = st.lists(st.tuples(st.sampled_from(["A", "B", "C"]), st.sampled_from(["set", "add"]),
                         st.integers(-50, 50)), max_size=40)


@given(start=st.dictionaries(st.sampled_from(["A", "B", "C"]), st.integers(0, 100)), ops=ops)
def test_fold_equals_sequential_application(start: dict[str, int], ops: list[tuple[str, str, int]]) -> None:
    events = [rec(i + 1, sku, kind, abs(n) if kind == "set" else n) for i, (sku, kind, n) in enumerate(ops)]
    sequential = dict(start)
    for e in events:
        sku = str(e.payload["sku"])
        if e.type == "InventoryUpdated":
            sequential[sku] = int(e.payload["quantity"])
        else:
            sequential[sku] = sequential.get(sku, 0) + int(e.payload["delta"])
    folded = dict(start)
    for c in fold(events):
        folded[c.sku] = (folded.get(c.sku, 0) if c.base is None else c.base) + c.delta
    assert folded == sequential
