"""The verdict of ``eventstore bench memory`` (eventstore/bench/flatness.py), without servers: a flat
process passes, a leak of a few hundred bytes an event fails on both thresholds, noise does not."""

from __future__ import annotations

import random

import pytest

from eventstore.bench import flatness
from eventstore.bench.heaptrace import component_of

TOTAL = 1_000_000


def run(per_event_bytes: float, noise_kib: int = 0, base_kib: int = 120 * 1024, seed: int = 1) -> flatness.Samples:
    """Samples of a process that warms up over the first 5% and then grows ``per_event_bytes`` an event."""
    rnd = random.Random(seed)
    s = flatness.Samples("p", 1)
    for done in range(0, TOTAL + 1, 5_000):
        warmup = min(done / (TOTAL * 0.05), 1.0) * base_kib * 0.8
        kib = int(base_kib * 0.2 + warmup + done * per_event_bytes / 1024 + rnd.randint(-noise_kib, noise_kib))
        s.add(done, kib, kib)
    return s


def test_flat_process_is_flat_despite_noise() -> None:
    v = flatness.verdict(run(0.0, noise_kib=3 * 1024), TOTAL)
    assert v.flat, v
    assert abs(v.slope) < 200
    assert 0.95 < v.ratio < 1.05


def test_slow_leak_fails_on_slope_before_ratio() -> None:
    v = flatness.verdict(run(40.0), TOTAL)  # 40 B/event: ~34 MiB over 900k events
    assert not v.flat
    assert v.slope == pytest.approx(40 * flatness.PER / 1024, rel=0.01)
    assert "slope" in v.describe()


def test_fast_leak_fails_on_both() -> None:
    v = flatness.verdict(run(500.0), TOTAL)
    assert not v.flat
    assert v.ratio > 3
    assert "end/warm" in v.describe() and "slope" in v.describe()


def test_milestones_and_peak() -> None:
    s = run(0.0)
    s.add(TOTAL, 50_000, 200_000)  # the kernel's high-water mark is kept even when RSS falls
    labels = [label for label, _ in s.milestones(TOTAL)]
    assert labels == ["start", "warm", "25%", "50%", "75%", "end"]
    assert dict(s.milestones(TOTAL))["end"] == 50_000
    assert s.hwm_kib == 200_000
    s.add(TOTAL, 0, 0)  # a gone process reads as 0: not a sample
    assert s.end == 50_000


def test_slope_needs_two_points() -> None:
    assert flatness.slope_kib_per_100k([(5, 100)], 0) == 0.0
    assert flatness.slope_kib_per_100k([(0, 0), (100_000, 1024)], 0) == pytest.approx(1024)
    assert not flatness.verdict(flatness.Samples("empty", 1), TOTAL).flat


def test_component_attribution_takes_the_innermost_frame_of_ours() -> None:
    assert component_of(["/x/site-packages/confluent_kafka/a.py", "/w/eventstore/projection/publisher.py",
                         "/w/eventstore/core/lifecycle.py"]) == "publisher"
    assert component_of(["/w/eventstore/projection/handoff.py", "/w/eventstore/projection/projector.py"]) == "hand-off"
    assert component_of(["/w/eventstore/postgres/intake.py", "/w/eventstore/projection/projector.py"]) == "projector"
    assert component_of(["/w/consumers/views.py"]) == "subscriber"
    assert component_of(["/usr/lib/python3.11/threading.py"]).startswith("other")
