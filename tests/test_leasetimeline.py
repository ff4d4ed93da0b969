"""The lease benchmark's database-clock replay (eventstore/bench/leasetimeline.py), without servers."""

from __future__ import annotations

from datetime import datetime, timedelta

from eventstore.bench.leasetimeline import fifo_floor_ms, timeline

T0 = datetime(2026, 1, 1)


def at(ms: float) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def test_the_replay_splits_a_contended_resource_into_wait_hold_and_gap() -> None:
    s = "lease-r"
    rows = [
        ("1", s, "LeaseGranted", "a", at(0)),
        ("2", s, "LeaseWaited", "b", at(1)),
        ("3", s, "LeaseWaited", "c", at(2)),
        ("4", s, "LeaseReleased", "a", at(10)),  # hand-off: release and grant in one transaction
        ("4", s, "LeaseGranted", "b", at(10)),
        ("5", s, "LeaseReleased", "b", at(16)),
        ("6", s, "LeaseGranted", "c", at(17)),
    ]
    t = timeline(rows)
    assert t.grants == 3 and t.transactions == 6 and t.queue_only == 2
    assert t.queued_to_granted == [9.0, 15.0] and t.ahead_when_queued == [0, 1]
    assert t.per_turn_ahead == [9.0, 7.5]
    assert t.hold == [10.0, 6.0] and t.gap == [0.0, 1.0] and t.span_ms == 17.0


def test_a_denied_waiter_leaves_the_replayed_queue() -> None:
    s = "lease-r"
    rows = [("1", s, "LeaseGranted", "a", at(0)), ("2", s, "LeaseWaited", "b", at(1)),
            ("3", s, "LeaseDenied", "b", at(5)), ("4", s, "LeaseWaited", "c", at(6)),
            ("5", s, "LeaseReleased", "a", at(8)), ("5", s, "LeaseGranted", "c", at(8))]
    t = timeline(rows)
    assert t.ahead_when_queued == [0] and t.queued_to_granted == [2.0]


def test_the_fifo_floor_is_agents_times_durable_commits() -> None:
    assert fifo_floor_ms(16, 0.5) == 8.0
    assert fifo_floor_ms(16, 0.5, 2.0) == 16.0


def test_waits_chained_when_they_end_replay_from_their_enqueued_at() -> None:
    """Since migration 0013 a LeaseWaited is chained with the grant or denial that ends it and carries
    ``enqueued_at``: the same run as above reads the same phases, with no queue-only transaction."""
    s = "lease-r"
    rows = [
        ("1", s, "LeaseGranted", "a", at(0)),
        ("4", s, "LeaseReleased", "a", at(10)),  # hand-off: release, the wait it ends, the grant
        ("4", s, "LeaseWaited", "b", at(10), at(1)),
        ("4", s, "LeaseGranted", "b", at(10)),
        ("5", s, "LeaseReleased", "b", at(16)),
        ("6", s, "LeaseWaited", "c", at(17), at(2)),
        ("6", s, "LeaseGranted", "c", at(17)),
    ]
    t = timeline(rows)
    assert t.grants == 3 and t.transactions == 4 and t.queue_only == 0
    assert t.queued_to_granted == [9.0, 15.0] and t.ahead_when_queued == [0, 1]
    assert t.hold == [10.0, 6.0] and t.gap == [0.0, 1.0] and t.span_ms == 17.0
    denied = [("1", s, "LeaseGranted", "a", at(0)), ("3", s, "LeaseWaited", "b", at(5), at(1)),
              ("3", s, "LeaseDenied", "b", at(5)), ("5", s, "LeaseReleased", "a", at(8)),
              ("5", s, "LeaseWaited", "c", at(8), at(6)), ("5", s, "LeaseGranted", "c", at(8))]
    t = timeline(denied)
    assert t.ahead_when_queued == [0] and t.queued_to_granted == [2.0]
