"""Backoff for retrying transient failures (pure): exponential with full jitter, capped."""

from __future__ import annotations

import random
from collections.abc import Iterator


def backoff_delays(base: float = 0.01, cap: float = 2.0, rng: random.Random | None = None) -> Iterator[float]:
    """Endless delays: attempt n waits uniformly in [0, min(cap, base * 2**n)]."""
    r = rng or random.Random()
    n = 0
    while True:
        yield r.uniform(0, min(cap, base * (2 ** min(n, 30))))
        n += 1
