"""Whether a process's resident set stayed flat over a run: milestones, slope and verdict from RSS samples.

Pure arithmetic over samples ``(progress, rss KiB)`` so the verdict of ``eventstore bench memory`` is
tested without servers. The baseline is measured in the same run: the RSS once the process is warm
(the first ``WARM`` of the events through: imports done, caches and buffers at working size). A process
is flat when its end RSS is within ``MAX_END_OVER_WARM`` of that baseline and the least-squares slope of
RSS over events after warm-up stays under ``MAX_SLOPE_KIB`` per 100,000 events (about 10 bytes an event:
a leak of one small object per event exceeds it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

WARM = 0.10  # share of the run after which a process counts as warm (the in-run baseline)
MILESTONES = (("start", 0.0), ("warm", WARM), ("25%", 0.25), ("50%", 0.50), ("75%", 0.75))
MAX_END_OVER_WARM = 1.10
MAX_SLOPE_KIB = 1024.0  # KiB per 100,000 events after warm-up
PER = 100_000


@dataclass
class Samples:
    """RSS samples of one process against its progress (events it has handled so far)."""

    name: str
    pid: int
    points: list[tuple[int, int]] = field(default_factory=list)  # (progress, VmRSS KiB)
    hwm_kib: int = 0  # the kernel's peak resident set (VmHWM), last read

    def add(self, progress: int, rss_kib: int, hwm_kib: int) -> None:
        if rss_kib > 0:  # 0: the process has gone; keep what was read while it ran
            self.points.append((progress, rss_kib))
            self.hwm_kib = max(self.hwm_kib, hwm_kib)

    def at(self, progress: int) -> int:
        """RSS (KiB) at the first sample with at least ``progress`` events (the last sample if none)."""
        for done, kib in self.points:
            if done >= progress:
                return kib
        return self.points[-1][1] if self.points else 0

    def milestones(self, total: int) -> list[tuple[str, int]]:
        """(label, KiB) at start, warm, 25%, 50%, 75% of ``total`` and at the end."""
        if not self.points:
            return [(label, 0) for label, _ in MILESTONES] + [("end", 0)]
        out = [("start", self.points[0][1])]
        out += [(label, self.at(int(total * share))) for label, share in MILESTONES[1:]]
        return [*out, ("end", self.points[-1][1])]

    @property
    def end(self) -> int:
        return self.points[-1][1] if self.points else 0

    @property
    def peak_sampled(self) -> int:
        return max((kib for _, kib in self.points), default=0)


def slope_kib_per_100k(points: list[tuple[int, int]], after: int) -> float:
    """Least-squares slope of RSS (KiB) over events for the samples at or beyond ``after`` events, in KiB
    per 100,000 events; 0.0 when fewer than two distinct progress values remain."""
    tail = [(x, y) for x, y in points if x >= after]
    if len({x for x, _ in tail}) < 2:
        return 0.0
    n = len(tail)
    mx = sum(x for x, _ in tail) / n
    my = sum(y for _, y in tail) / n
    sxx = sum((x - mx) ** 2 for x, _ in tail)
    sxy = sum((x - mx) * (y - my) for x, y in tail)
    return sxy / sxx * PER


@dataclass(frozen=True)
class Verdict:
    warm_kib: int
    end_kib: int
    ratio: float  # end / warm
    slope: float  # KiB per 100,000 events after warm-up
    flat: bool

    def describe(self) -> str:
        if self.flat:
            return "FLAT"
        why = []
        if self.ratio > MAX_END_OVER_WARM:
            why.append(f"end/warm {self.ratio:.2f} > {MAX_END_OVER_WARM:.2f}")
        if self.slope > MAX_SLOPE_KIB:
            why.append(f"slope {self.slope:,.0f} > {MAX_SLOPE_KIB:,.0f} KiB/100k")
        return "GROWS (" + "; ".join(why) + ")"


def verdict(s: Samples, total: int) -> Verdict:
    """Flat or growing, by both thresholds, against the process's own warm baseline."""
    warm_at = int(total * WARM)
    warm = s.at(warm_at)
    ratio = s.end / warm if warm else 0.0
    slope = slope_kib_per_100k(s.points, warm_at)
    flat = bool(warm) and ratio <= MAX_END_OVER_WARM and slope <= MAX_SLOPE_KIB
    return Verdict(warm, s.end, ratio, slope, flat)
