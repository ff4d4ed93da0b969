"""``eventstore bench visible``'s summary (pure, no servers): each subscriber fetch wait with its ratio
against the 10 ms baseline of the same run, and a wait with nothing visible said plainly."""

from __future__ import annotations

import pytest

from eventstore.bench.viewtiming import SPLIT
from eventstore.bench.visiblelatency import _summary


def test_the_summary_gives_each_wait_its_ratio_against_the_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    def parts(ms: float) -> dict[str, list[float]]:
        return {"total": [ms / 1000] * 10, **{k: [ms / 4000] * 10 for k in SPLIT}}

    _summary({10: parts(20.0), 2: parts(15.0), 5: {"total": [], **{k: [] for k in SPLIT}}},
             {10: [7.0, 9.0], 2: [12.0], 5: []}, {10: [500.0], 2: [700.0], 5: []}, 1000)
    out = capsys.readouterr().out
    lines = {line.split("|")[0].strip(): line for line in out.splitlines() if "|" in line}
    assert "0.75x / 0.75x" in lines["2 ms"] and "12.0" in lines["2 ms"]
    assert lines["10 ms"].rstrip().endswith("|") and "8.0" in lines["10 ms"]  # the baseline: no ratio, mean idle
    assert "nothing visible" in out
