"""The founding document's shared inventory, event-sourced.

Streams are named ``inventory-<sku>``. ``InventoryUpdated`` sets the count (a supplier feed),
``InventoryAdjusted`` changes it by a delta (a sale, a correction). The read model
``inventory(sku, quantity, version)`` holds the current count and the stream version it reflects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from pydantic import Field

from eventstore.core.events import Event
from eventstore.core.records import RecordedEvent
from eventstore.postgres.readmodels import ReadModel, read_models

Cursor = psycopg.Cursor[Any]
STREAM_PREFIX = "inventory-"


class InventoryUpdated(Event):
    """The count of a SKU was set (e.g. by a supplier feed)."""

    sku: str = Field(min_length=1, max_length=100)
    quantity: int = Field(ge=0)


class InventoryAdjusted(Event):
    """The count of a SKU changed by ``delta`` (negative for a sale)."""

    sku: str = Field(min_length=1, max_length=100)
    delta: int


def stream_for(sku: str) -> str:
    return STREAM_PREFIX + sku


def quantity_reducer(state: Any, ev: RecordedEvent) -> Any:
    """For a local view (``consumers.LocalView(reducer=quantity_reducer)``): the SKU's count."""
    if ev.type == InventoryUpdated.event_type:
        return int(ev.payload["quantity"])
    if ev.type == InventoryAdjusted.event_type:
        return int(state or 0) + int(ev.payload["delta"])
    return state


@dataclass(frozen=True)
class SkuChange:
    """The net effect of a run of events on one SKU: set to ``base`` (if set) then add ``delta``."""

    sku: str
    base: int | None
    delta: int
    version: int


def fold(events: Sequence[RecordedEvent]) -> list[SkuChange]:
    """Collapse a batch into one change per SKU, preserving the order's meaning (pure)."""
    acc: dict[str, SkuChange] = {}
    for ev in events:
        sku = str(ev.payload["sku"])
        prev = acc.get(sku, SkuChange(sku, None, 0, 0))
        if ev.type == InventoryUpdated.event_type:
            acc[sku] = SkuChange(sku, int(ev.payload["quantity"]), 0, ev.version)
        else:
            acc[sku] = SkuChange(sku, prev.base, prev.delta + int(ev.payload["delta"]), ev.version)
    return list(acc.values())


class InventoryModel(ReadModel):
    """One row per SKU; a batch becomes one set-based upsert."""

    name = "inventory"
    table = "inventory"

    def setup(self, cur: Cursor) -> None:
        cur.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (sku text PRIMARY KEY, quantity bigint NOT NULL, "
            "version bigint NOT NULL)"
        ).format(sql.Identifier(self.table)))

    @ReadModel.on(InventoryUpdated, InventoryAdjusted)
    def _handle(self, cur: Cursor, ev: RecordedEvent, typed: Any) -> None:  # pragma: no cover - batch path
        self.apply_batch(cur, [ev])

    def apply_batch(self, cur: Cursor, events: Sequence[RecordedEvent]) -> None:
        for ev in events:
            if ev.stream != stream_for(str(ev.payload["sku"])):
                raise ValueError(f"event for SKU {ev.payload['sku']!r} was sent to stream {ev.stream!r}; "
                                 f"inventory events belong on {stream_for(str(ev.payload['sku']))!r}")
        changes = fold(events)
        # The projector holds each stream's lock, so no other transaction touches these SKUs now.
        cur.execute(
            sql.SQL(
                "WITH c AS (SELECT * FROM unnest(%b::text[], %b::bigint[], %b::bigint[], %b::bigint[]) "
                "           AS c(sku, base, delta, version)), "
                "upd AS (UPDATE {t} AS t SET quantity = COALESCE(c.base, t.quantity) + c.delta, "
                "        version = c.version FROM c WHERE t.sku = c.sku RETURNING t.sku) "
                "INSERT INTO {t} (sku, quantity, version) "
                "SELECT c.sku, COALESCE(c.base, 0) + c.delta, c.version FROM c "
                "WHERE c.sku NOT IN (SELECT sku FROM upd)"
            ).format(t=sql.Identifier(self.table)),
            ([c.sku for c in changes], [c.base for c in changes], [c.delta for c in changes],
             [c.version for c in changes]),
        )


read_models.register(InventoryModel, name="inventory")
