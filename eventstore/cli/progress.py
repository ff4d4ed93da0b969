"""A small text progress bar on stderr, for long commands such as ``eventstore rebuild``."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    """A small text progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, label: str, width: int = 30) -> None:
        self.label, self.width = label, width
        self.started = time.perf_counter()
        self._drawn = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - self._drawn < 0.1 and done < total:
            return
        self._drawn = now
        frac = 1.0 if total <= 0 else min(1.0, done / total)
        filled = int(frac * self.width)
        rate = done / max(now - self.started, 1e-9)
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {frac:4.0%} "
                         f"{done:,}/{total:,} events {rate:,.0f}/s")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()
