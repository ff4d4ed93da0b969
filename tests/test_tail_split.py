"""The tail split of ``bench latency`` (eventstore/bench/tailsplit.py): pure parts, no servers."""

from __future__ import annotations

import gc

from eventstore.bench.tailsplit import GcPauses, Stall, Timeline, gc_stalls, parse_pg_log, slow_writes, tail_report

LOG = """\
1000.100 [11] LOG:  duration: 12.500 ms  execute <unnamed>: COMMIT
1000.200 [12] LOG:  automatic vacuum of table "db.public.events": index scans: 0
\tpages: 0 removed, 120 remain
\tsystem usage: CPU: user: 0.01 s, system: 0.00 s, elapsed: 0.050 s
1000.300 [13] LOG:  checkpoint starting: time
1000.310 [14] DETAIL:  Parameters: $1 = '...'
1001.300 [13] LOG:  checkpoint complete: wrote 10 buffers (0.1%); write=0.9 s, sync=0.1 s, total=1.000 s
1001.400 [11] LOG:  duration: 7.000 ms  statement: SELECT 1
1001.500 [11] LOG:  connection received: host=[local]
"""


def test_the_server_log_becomes_stalls_on_the_monotonic_clock() -> None:
    stalls = parse_pg_log(LOG, wall_minus_mono=1000.0)
    kinds = [(s.kind, round(s.start, 4), round(s.end, 4)) for s in stalls]
    assert kinds == [("pg COMMIT", 0.0875, 0.1), ("autovacuum", 0.15, 0.2), ("checkpoint", 0.3, 1.3),
                     ("pg SELECT", 1.393, 1.4)]
    assert stalls[1].detail == "db.public.events"
    assert stalls[0].detail.startswith("COMMIT")


def test_the_tail_is_split_by_step_and_by_what_it_overlapped() -> None:
    # 100 events 10 ms apart, each 10 ms end to end (1 ms produce, 3 fetch, 0 queue, 4 write, 1 notify,
    # 1 lookup); the last two also wait 50 ms in the write step, under a collector pause of the projector.
    timelines: list[Timeline] = []
    for i in range(100):
        t = i * 0.010
        extra = 0.050 if i >= 98 else 0.0
        timelines.append((t, t + 0.001, t + 0.004, t + 0.004, t + 0.008 + extra, t + 0.009 + extra,
                          t + 0.010 + extra))
    pause = Stall(0.985, 1.030, "projector gc2")
    unrelated = Stall(0.100, 0.105, "pg COMMIT")
    report = tail_report(timelines, [pause, unrelated], 98.0)
    assert report is not None
    assert report.events == 2
    assert round(report.threshold_ms, 3) == 60.0
    assert round(report.mean_steps_ms["write"], 3) == 54.0
    assert round(report.median_steps_ms["write"], 3) == 4.0
    assert set(report.overlapped) == {"projector gc2"}
    assert report.overlapped["projector gc2"][0] == 2
    assert report.longest == [pause]
    assert report.by_second == {0: 2}
    text = "\n".join(report.lines())
    assert "slowest 2%" in text and "projector gc2 2" in text
    assert tail_report([], [], 99.0) is None


def test_collector_pauses_and_slow_writes_are_noted() -> None:
    pauses = GcPauses().install()
    try:
        gc.collect()
    finally:
        pauses.remove()
    noted = pauses.take()
    assert noted and noted[-1][2] == 2 and noted[-1][1] >= noted[-1][0]
    assert gc_stalls(noted, "agent")[-1].kind == "agent gc2"
    assert pauses.take() == []
    writes = [[0.0, 0.002, ["a"]], [1.0, 1.015, ["b"]]]
    assert [(s.start, s.end) for s in slow_writes(writes)] == [(1.0, 1.015)]
