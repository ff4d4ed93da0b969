"""``eventstore simulate``: the fault schedule and the report (fast, pure), and one bounded run of the
command on its own embedded servers with 10 agents and every fault kind, all promises passing."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

from eventstore.simulate.faults import FAULT_KINDS, FaultRecord, plan
from eventstore.simulate.hostile import KINDS, hostile_message
from eventstore.simulate.report import Sample, render, throughput


def test_plan_fires_every_kind_inside_the_run_in_order() -> None:
    schedule = plan(30, FAULT_KINDS)
    assert [k for _, k in schedule] == list(FAULT_KINDS)
    times = [t for t, _ in schedule]
    assert times == sorted(times) and times[0] >= 30 * 0.25 - 1e-9 and times[-1] <= 30 * 0.8 + 1e-9


def test_plan_repeats_rounds_on_a_long_run_and_keeps_the_gap() -> None:
    schedule = plan(600, FAULT_KINDS, gap=5.0)
    kinds = [k for _, k in schedule]
    assert len(kinds) % len(FAULT_KINDS) == 0 and len(kinds) > len(FAULT_KINDS)
    assert all(kinds.count(k) == kinds.count(FAULT_KINDS[0]) for k in FAULT_KINDS)
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(schedule)]
    assert min(gaps) >= 5.0 - 1e-9


def test_hostile_messages_are_what_their_names_say() -> None:
    msgs = {k: hostile_message(k, "inventory-x", "agent") for k in KINDS}
    assert msgs["non-object"].value == b"[]"
    assert msgs["deep-nesting"].value.startswith(b"[" * 10_000)
    assert b"0001-01-01T00:00:00+14:00" in msgs["bad-timestamp"].value
    assert 900_000 < len(msgs["oversize"].value) < 1_000_000  # above the event limit, under the broker's
    assert all(m.key == b"inventory-x" for m in msgs.values())


def test_report_is_self_contained_html_with_charts_and_verdict() -> None:
    samples = [Sample(0.5, 0, 0, {"committed": 0}, True), Sample(1.0, 50, 3, {"committed": 50}, True),
               Sample(1.5, 50, None, {"committed": 50}, False), Sample(2.0, 150, 1, {"committed": 150}, True)]
    assert throughput(samples) == [(1.0, 100.0), (1.5, 0.0), (2.0, 200.0)]

    class C:
        def __init__(self, promise: str, ok: bool) -> None:
            self.promise, self.ok, self.detail = promise, ok, "<evidence>"

    html = render("conditions", [C("no lost update", True), C("order", False)], samples,
                  [FaultRecord(1.2, "db-restart", "down")])
    assert "PROMISES BROKEN" in html and html.count("<svg") == 4
    assert "&lt;evidence&gt;" in html and "<evidence>" not in html  # escaped
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # nothing fetched from a network
    ok = render("c", [C("a", True)], samples, [])
    assert "all promises kept" in ok


def test_simulate_command_keeps_every_promise_under_every_fault(tmp_path: Path) -> None:
    """The CI soak: 10 agents, 25 s, every fault kind at least once (incl. a database restart)."""
    report = tmp_path / "report.html"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}  # embedded servers
    done = subprocess.run(
        [sys.executable, "-m", "eventstore.cli", "simulate", "--agents", "10", "--seconds", "25",
         "--db-down", "5", "--report", str(report)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr[-5000:]
    for kind in FAULT_KINDS:
        assert f"fault {kind} at" in out, f"fault {kind} did not fire:\n{out}"
    assert "NOT INJECTED" not in out, out
    promises = ["no lost update", "idempotency", "committed only", "order without holes", "exactly-once effect",
                "rebuild equals live", "history verifies", "hostile input", "kill switch", "components heal"]
    for promise in promises:
        assert f"PASS  {promise}" in out, out
    assert "FAIL" not in out
    committed = int(re.search(r"PASS  no lost update: (\d+) committed adjustments", out).group(1))  # type: ignore[union-attr]
    assert committed >= 100, f"too little happened to test anything: {committed} committed adjustments"
    html = report.read_text()
    assert "all promises kept" in html and html.count("<svg") == 4
