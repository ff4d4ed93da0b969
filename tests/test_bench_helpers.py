"""The benchmarks' pure helpers, without servers: FIFO inversion counting, profile summaries, and the
peer library's settings from a libpq URL."""

from __future__ import annotations

from pathlib import Path

from eventstore.bench.leases import fifo_inversions
from eventstore.bench.peers import _env
from eventstore.bench.profile import summarise


def test_fifo_inversions_counts_only_waiters_granted_out_of_order() -> None:
    in_order = [("r", 0.0, 0.1), ("r", 0.02, 0.2), ("r", 0.04, 0.3)]
    assert fifo_inversions(in_order) == (0, 3)
    swapped = [("r", 0.0, 0.3), ("r", 0.02, 0.2)]  # the later request got the lease first
    assert fifo_inversions(swapped) == (1, 1)
    # asked within the margin, or after the first one already held it: no order to keep
    assert fifo_inversions([("r", 0.0, 0.3), ("r", 0.001, 0.2)]) == (0, 0)
    assert fifo_inversions([("r", 0.0, 0.1), ("r", 0.2, 0.3)]) == (0, 0)
    assert fifo_inversions([("a", 0.0, 0.3), ("b", 0.02, 0.2)]) == (0, 0)


def test_summarise_py_spy_raw_output(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text("thread (1);main (x.py:1);emit (client.py:10);expect (listener.py:44) 30\n"
                   "thread (1);main (x.py:1);emit (client.py:10);encode (envelope.py:30) 10\n"
                   "garbage\n")
    lines = summarise(raw, ["expect (", "encode ("])
    assert lines[0].startswith("40 samples")
    assert "75.0%  expect (listener.py)" in lines[1]
    assert any(line.strip() == "25.0%  encode" for line in lines)


def test_peer_settings_from_unix_socket_and_tcp_urls() -> None:
    env = _env("postgresql://postgres:@/postgres?host=/tmp/pg", "peer")
    assert (env["POSTGRES_HOST"], env["POSTGRES_PORT"], env["POSTGRES_DBNAME"]) == ("/tmp/pg", "5432", "peer")
    env = _env("postgresql://u:pw@db.example:6543/x", "peer")
    assert (env["POSTGRES_HOST"], env["POSTGRES_PORT"], env["POSTGRES_USER"], env["POSTGRES_PASSWORD"]) == (
        "db.example", "6543", "u", "pw")


def test_latency_split_assigns_each_step_and_counts_failures_apart() -> None:
    from eventstore.bench.latencysplit import split_of
    from eventstore.bench.tailsplit import STEPS
    from eventstore.core.outcomes import Outcome

    # a: every timestamp; b: committed but the listener never named it; c: rejected (a failure)
    sent = {"a": 0.000, "b": 0.000, "c": 0.000}
    acked = {"a": 0.001, "b": 0.001, "c": 0.001}
    noted = {"handed": [[0.004, 0.004, ["a", "b"]], [0.009, 0.009, ["c"]]],
             "written": [[0.005, 0.012, ["a", "b"]], [0.010, 0.011, ["c"]]]}
    woke = [(0.013, ["a"]), (0.020, ["a"])]  # the first wake-up naming an event counts
    resolved = {"a": 0.015, "b": 0.030, "c": 0.016}
    statuses = {"a": Outcome.COMMITTED, "b": Outcome.COMMITTED, "c": Outcome.REJECTED}
    sp = split_of(sent, acked, noted, woke, resolved, statuses)
    assert (sp.failed, sp.unmatched, sp.batch_sizes) == (1, 1, [2, 1])
    got = {s: round(sp.steps[s][0] * 1000, 3) for s in STEPS}
    assert got == {"produce": 1.0, "fetch": 3.0, "queue": 1.0, "write": 7.0, "notify": 1.0, "lookup": 2.0}
    assert [round(x * 1000, 3) for x in (sp.total[0], sp.broker[0], sp.ours[0])] == [15.0, 4.0, 11.0]
