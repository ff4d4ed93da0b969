"""Starting, watching and stopping the processes a benchmark measures.

Every server benchmark starts a projector (or a timed variant of it) as a child process, meters the servers'
processes from /proc and waits for the log head to reach a target. These are the one copy of each step:
the child's environment from the run's settings, the child started in its own session and always stopped
(SIGTERM, then SIGKILL after a grace period), the pids to meter, and the wait that fails on a stalled head.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from eventstore.core.lifecycle import BackgroundRunner
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedServers

TICK = os.sysconf("SC_CLK_TCK")  # /proc's CPU times are in clock ticks


def stat_cpu(stat: str, with_children: bool = False) -> float:
    """CPU seconds (user + system; reaped children's too when asked) from the text of a /proc ``stat`` file
    of a process or a thread (the fields after the command name, which may itself hold spaces or ``)``)."""
    fields = stat.rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15 if with_children else 13]) / TICK


def proc_cpu(pid: int, with_children: bool = False) -> float:
    """CPU seconds of a process from /proc (0 when it is gone)."""
    try:
        return stat_cpu(Path(f"/proc/{pid}/stat").read_text(), with_children)
    except OSError:
        return 0.0


def postmaster_pid(conn: psycopg.Connection[Any]) -> int:
    """The pid of the server's postmaster (the parent of this connection's backend)."""
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    return int(Path(f"/proc/{row[0] if row else 0}/stat").read_text().rsplit(")", 1)[1].split()[1])


def head(conn: psycopg.Connection[Any]) -> int:
    """The log's head position (0 for an empty log): what a benchmark waits on."""
    row = conn.execute("SELECT position FROM log_head").fetchone()
    return int(row[0]) if row else 0


def server_pids(servers: EmbeddedServers, conn: psycopg.Connection[Any]) -> dict[str, int]:
    """The processes a benchmark meters besides its own children: PostgreSQL's postmaster (whose children
    are its backends) and the embedded broker, when this run started one."""
    pids = {"postgres": postmaster_pid(conn)}
    if servers.broker.pid is not None:
        pids["tansu"] = servers.broker.pid
    return pids


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """This process's environment with ``settings``' servers, namespace, projector group, batch size, intake
    partitions and authentication, so that an ``eventstore`` child process runs with the same settings;
    ``extra`` variables last (they win)."""
    db, bootstrap = settings.require_servers()
    return {**os.environ, "EVENTSTORE_DATABASE_URL": db, "EVENTSTORE_KAFKA_BOOTSTRAP": bootstrap,
            "EVENTSTORE_NAMESPACE": settings.namespace, "EVENTSTORE_PROJECTOR_GROUP": settings.projector_group,
            "EVENTSTORE_BATCH_SIZE": str(settings.batch_size),
            "EVENTSTORE_INTAKE_PARTITIONS": str(settings.intake_partitions),
            "EVENTSTORE_AUTH": "on" if settings.auth else "off", **extra}


def stop(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM (the process shuts down as an operator's stop would), SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def child(argv: Sequence[str], env: dict[str, str], log_path: Path, *, cwd: str | None = None,
          append: bool = False, grace: float = 20.0) -> Iterator[subprocess.Popen[bytes]]:
    """A child process in its own session (a terminal's Ctrl-C reaches only the benchmark, which stops it),
    its output in ``log_path``; stopped by :func:`stop` when the block ends, however it ends."""
    with log_path.open("ab" if append else "wb") as out:
        proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            yield proc
        finally:
            stop(proc, grace)


def serve(runner: BackgroundRunner, out: Path, snapshot: Callable[[], object],
          tick: Callable[[], None] | None = None) -> int:
    """The child's side of :func:`child` for an instrumented projector: run ``runner`` until SIGTERM (or until it
    ends), writing ``snapshot()`` as JSON to ``out`` (whole, then renamed) on each SIGUSR1, and calling ``tick``
    every 50 ms meanwhile; raises what stopped the runner, else 0."""
    stop, dump = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: dump.set())
    runner.start()
    try:
        while not stop.is_set() and not runner.finished.is_set():
            if tick is not None:
                tick()
            if dump.wait(0.05):
                dump.clear()
                tmp = out.with_suffix(".tmp")
                tmp.write_text(json.dumps(snapshot()))
                os.replace(tmp, out)
    finally:
        runner.stop()
    runner.raise_if_failed()
    return 0


def wait_for(progress: Callable[[], int], target: int, stall_timeout: float, what: str,
             interval: float = 0.005) -> None:
    """Poll ``progress()`` until it reaches ``target``; RuntimeError naming ``what`` when it stops moving for
    ``stall_timeout`` seconds (a stalled run fails instead of hanging the benchmark)."""
    last, progress_at = progress(), time.monotonic()
    while (now := progress()) < target:
        if now != last:
            last, progress_at = now, time.monotonic()
        elif time.monotonic() - progress_at > stall_timeout:
            raise RuntimeError(f"{what} stalled at {now}, {target - now} short of {target}, "
                               f"for {stall_timeout:.0f} s")
        time.sleep(interval)
