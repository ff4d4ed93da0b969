"""The pure rule for which messages of a batch are applied: consecutive offsets from the stored one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from eventstore.core.offsetorder import order_batch


def test_consecutive_offsets_are_all_applied() -> None:
    order = order_batch([(0, 5), (1, 0), (0, 6), (1, 1)], {0: 5, 1: 0})
    assert order.fresh == [0, 1, 2, 3] and not order.behind and not order.rewind


def test_a_hole_cuts_its_partition_only() -> None:
    order = order_batch([(0, 5), (1, 0), (0, 7), (1, 1), (0, 8)], {0: 5, 1: 0})
    assert order.fresh == [0, 1, 3]
    assert order.rewind == {0: 6}


def test_a_hole_at_the_start_applies_nothing_of_that_partition() -> None:
    assert order_batch([(0, 9)], {0: 7}).rewind == {0: 7}
    assert order_batch([(0, 9)], {0: 7}).fresh == []


def test_applied_and_repeated_offsets_are_dropped() -> None:
    order = order_batch([(0, 3), (0, 4), (0, 4), (0, 5)], {0: 4})
    assert order.fresh == [1, 3] and order.behind == {0: 4} and not order.rewind


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 12)), max_size=40),
       st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(0, 6)))
def test_applied_offsets_always_continue_the_stored_ones_without_a_hole(
    batch: list[tuple[int, int]], starts: tuple[int, int, int]
) -> None:
    stored = dict(enumerate(starts))
    order = order_batch(batch, stored)
    nxt = dict(stored)
    for i in order.fresh:
        p, offset = batch[i]
        assert offset == nxt[p], "each applied offset is the next one of its partition"
        nxt[p] = offset + 1
    for p, offset in order.rewind.items():
        assert offset == nxt[p], "the rewind goes back to the first missing offset"
        assert any(bp == p and bo > offset for bp, bo in batch), "a rewind only where a later record came"
    assert sorted(order.fresh) == order.fresh, "batch order is kept"
