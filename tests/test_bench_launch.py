"""The benchmarks' process launcher (eventstore/bench/launch.py), without servers: children are always
stopped, a stalled wait fails instead of hanging, the child's environment carries the run's settings."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from eventstore.bench.launch import child, child_env, stop, wait_for
from eventstore.core.settings import Settings

IGNORES_TERM = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('up', flush=True); time.sleep(60)")


def test_child_is_stopped_when_the_block_ends_even_on_error(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    with pytest.raises(RuntimeError, match="boom"), \
            child([sys.executable, "-c", "import time; time.sleep(60)"], {}, log) as proc:
        raise RuntimeError("boom")
    assert proc.poll() is not None  # SIGTERM ended it


def test_stop_kills_a_child_that_ignores_sigterm_after_the_grace(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    with child([sys.executable, "-c", IGNORES_TERM], {}, log, grace=0.5) as proc:
        deadline = time.monotonic() + 30
        while b"up" not in log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.02)
    assert proc.returncode == -9  # SIGKILL after the grace: the SIGTERM was ignored
    stop(proc)  # stopping a stopped child is a no-op


def test_child_log_appends_when_asked(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    for _ in range(2):
        with child([sys.executable, "-c", "print('line')"], {}, log, append=True) as proc:
            proc.wait(30)
    assert log.read_text().splitlines() == ["line", "line"]


def test_wait_for_returns_at_the_target_and_fails_on_a_stall() -> None:
    values = iter(range(0, 100))
    wait_for(lambda: next(values), 5, stall_timeout=5, what="counter", interval=0)
    with pytest.raises(RuntimeError, match=r"stuck stalled at 3, 7 short of 10, for 0 s"):
        wait_for(lambda: 3, 10, stall_timeout=0.05, what="stuck", interval=0.01)


def test_child_env_carries_the_settings_and_extra_variables_win() -> None:
    s = Settings.from_env().with_servers("postgresql:///x", "127.0.0.1:1").replace(
        namespace="ns-a", projector_group="g-a", batch_size=77, intake_partitions=3, auth=False)
    env = child_env(s, EVENTSTORE_BATCH_SIZE="5", EXTRA="1")
    assert env["EVENTSTORE_DATABASE_URL"] == "postgresql:///x"
    assert env["EVENTSTORE_KAFKA_BOOTSTRAP"] == "127.0.0.1:1"
    assert (env["EVENTSTORE_NAMESPACE"], env["EVENTSTORE_PROJECTOR_GROUP"]) == ("ns-a", "g-a")
    assert (env["EVENTSTORE_INTAKE_PARTITIONS"], env["EVENTSTORE_AUTH"]) == ("3", "off")
    assert env["EVENTSTORE_BATCH_SIZE"] == "5" and env["EXTRA"] == "1"
    child = Settings.from_env(env)  # what the child process reads back
    assert (child.namespace, child.projector_group, child.batch_size, child.intake_partitions, child.auth) == \
        ("ns-a", "g-a", 5, 3, False)


def test_stat_cpu_reads_user_and_system_time_past_a_hostile_command_name() -> None:
    """The command name in /proc/.../stat may hold spaces and ')': the times are counted from the last ')'."""
    from eventstore.bench.launch import TICK, proc_cpu, stat_cpu

    fields = ["S", "1", "1", "1", "0", "-1", "0", "0", "0", "0", "0", "30", "12", "7", "5"]  # utime 30, stime 12
    stat = "4242 (evil) name ) (x) " + " ".join(fields)
    assert stat_cpu(stat) == 42 / TICK
    assert stat_cpu(stat, with_children=True) == 54 / TICK
    import os

    assert proc_cpu(os.getpid()) > 0.0
    assert proc_cpu(2**22 + 12345) == 0.0  # no such process: 0, not an error


SERVED = """
import sys, threading
from pathlib import Path
from eventstore.bench.launch import serve
from eventstore.core.lifecycle import BackgroundRunner

class Counter(BackgroundRunner):
    def __init__(self) -> None:
        super().__init__("counter")
        self.n = 0
    def run(self) -> None:
        print("up", flush=True)
        while not self._stop.wait(0.01):
            self.n += 1
        if sys.argv[2] == "fail":
            raise RuntimeError("the runner failed")

c = Counter()
sys.exit(serve(c, Path(sys.argv[1]), lambda: {"n": c.n}))
"""


@pytest.mark.parametrize("how", ["ok", "fail"])
def test_serve_dumps_on_sigusr1_and_stops_on_sigterm(tmp_path: Path, how: str) -> None:
    """The instrumented child's loop (timedprojector, batchprojector): SIGUSR1 writes the snapshot as whole
    JSON, SIGTERM stops the runner, and a runner that failed makes the child fail."""
    import json
    import os
    import signal

    out, log = tmp_path / "out.json", tmp_path / "child.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    with child([sys.executable, "-c", SERVED, str(out), how], env, log) as proc:
        deadline = time.monotonic() + 30
        while b"up" not in log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGUSR1)
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert json.loads(out.read_text())["n"] >= 0
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert (code == 0) is (how == "ok"), log.read_text()
    if how == "fail":
        assert "the runner failed" in log.read_text()
