"""Which messages of a batch the projector may apply: per partition, the run of consecutive offsets
that starts at the stored next offset. Pure, so it is tested without servers.

A Kafka consumer hands over records in offset order, and our intake topic has no control records or
compaction, so a hole is never expected. It happens anyway when a broker makes a record visible before
an earlier one of a concurrent producer (seen with the embedded broker under load): the consumer steps
past the earlier one for good. Applying the records after a hole and storing the offset beyond it would
lose the record in the hole silently, so the batch is cut at the hole and the consumer is sent back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass
class OffsetOrder:
    """The decision for one batch. ``fresh``: indexes (into the batch) of the messages to apply, in
    batch order. ``behind``: partitions that carried messages already applied (a replay or a zombie
    batch) -> the stored offset. ``rewind``: partitions cut at a hole -> the offset to seek back to
    (the first one missing)."""

    fresh: list[int] = field(default_factory=list)
    behind: dict[int, int] = field(default_factory=dict)
    rewind: dict[int, int] = field(default_factory=dict)


def order_batch(offsets: Sequence[tuple[int, int]], stored: Mapping[int, int]) -> OffsetOrder:
    """Decide for ``offsets`` ((partition, offset) per message, in batch order) against ``stored``
    (partition -> next offset to apply; every partition of the batch must be present)."""
    out = OffsetOrder()
    expected = dict(stored)
    for i, (p, offset) in enumerate(offsets):
        if p in out.rewind:
            continue  # after a hole nothing more of this partition is applied from this batch
        if offset < expected[p]:
            if offset < stored[p]:
                out.behind[p] = stored[p]
            continue  # applied already (or a repeat inside this batch after a re-delivery)
        if offset > expected[p]:
            out.rewind[p] = expected[p]
            continue
        out.fresh.append(i)
        expected[p] = offset + 1
    return out
