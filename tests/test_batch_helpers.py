"""Helpers of the projector's batch path (issue 11), without servers: RecordedEvents built without the
frozen ``__init__`` equal the ones built with it, and the collector settings of a batch process."""

from __future__ import annotations

import dataclasses
import gc
import uuid
from datetime import UTC, datetime

import pytest

from eventstore.core.gcpolicy import BATCH_THRESHOLDS, tune_for_batches
from eventstore.core.records import RECORDED_FIELDS, RecordedEvent, recorded_event


def test_recorded_event_equals_the_dataclass_built_normally() -> None:
    now = datetime.now(UTC)
    values = (7, uuid.uuid4(), "s", 2, "T", 1, {"a": [1, 2]}, "agent", "key", uuid.uuid4(), None, now, now, "r", 3,
              b"p" * 32, b"h" * 32)
    fast, slow = recorded_event(*values), RecordedEvent(*values)
    assert fast == slow and hash(fast.event_id) == hash(slow.event_id)
    assert dataclasses.astuple(fast) == values and tuple(vars(fast)) == RECORDED_FIELDS
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.position = 8  # type: ignore[misc]
    with pytest.raises(ValueError):
        recorded_event(*values[:-1])


def test_tune_for_batches_freezes_the_heap_and_raises_the_first_threshold() -> None:
    before = gc.get_threshold()
    try:
        tune_for_batches()
        assert gc.get_threshold() == BATCH_THRESHOLDS
        assert gc.get_freeze_count() > 0
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
