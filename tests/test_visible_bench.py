"""``eventstore bench visible``'s summary (pure, no servers): each subscriber fetch wait with its ratio
against the 10 ms baseline of the same run, and a wait with nothing visible said plainly."""

from __future__ import annotations

import pytest

from eventstore.bench.viewtiming import SPLIT, SPLIT_WOKEN
from eventstore.bench.visiblelatency import AFTER, COSTS, WAKE, _summary


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


def test_the_woken_row_has_its_own_split_and_the_costs_are_printed(capsys: pytest.CaptureFixture[str]) -> None:
    def parts(ms: float, names: tuple[str, ...]) -> dict[str, list[float]]:
        return {"total": [ms / 1000] * 10, AFTER: [ms / 2000] * 10, **{k: [ms / 4000] * 10 for k in names}}

    costs = {w: {k: [1.0, 3.0] for k in COSTS} for w in (10, WAKE)}
    _summary({10: parts(20.0, SPLIT), WAKE: parts(10.0, SPLIT_WOKEN)}, {10: [7.0], WAKE: [7.0]},
             {10: [500.0], WAKE: [600.0]}, 1000, costs)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.strip().startswith("woken |")]
    assert len(rows) == 2  # the latency row and the cost row
    assert "0.50x / 0.50x (0.50x / 0.50x)" in rows[0] and "5.0 /" in rows[0]  # after recorded_at: 5 ms
    assert rows[1].count("2.0") == len(COSTS)  # the mean of each cost over the rounds
