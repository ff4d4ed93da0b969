"""Projectors for the tests: in a thread of the test process, or as a separate ``eventstore project``
process that a test can SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from eventstore.core.settings import Settings
from eventstore.projection.projector import Projector


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll until predicate() is true; fail the test naming what did not happen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def scalar(database_url: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
        return None if row is None else row[0]


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    db, kafka = settings.require_servers()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    env.update({
        "EVENTSTORE_DATABASE_URL": db,
        "EVENTSTORE_KAFKA_BOOTSTRAP": kafka,
        "EVENTSTORE_NAMESPACE": settings.namespace,
        "EVENTSTORE_INTAKE_PARTITIONS": str(settings.intake_partitions),
        "EVENTSTORE_BATCH_SIZE": str(settings.batch_size),
        "EVENTSTORE_APP_MODULES": ",".join(settings.app_modules),
        **extra,
    })
    return env


class ProjectorProcess:
    """``python -m eventstore.cli -v project`` in its own process; its log lines are collected."""

    def __init__(self, settings: Settings, **env: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eventstore.cli", "-v", "project"],
            env=settings_env(settings, **env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for raw in self.proc.stdout:
                self.lines.append(raw.decode(errors="replace").rstrip())

    def assignments(self) -> list[list[int]]:
        """Every partition assignment this projector logged, in order."""
        found = []
        for line in list(self.lines):
            if "assigned partitions [" in line:
                inner = line.split("assigned partitions [", 1)[1].split("]", 1)[0]
                found.append([int(x) for x in inner.split(",") if x.strip()])
        return found

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(5)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return "\n".join(self.lines)


@pytest.fixture
def projector(settings: Settings) -> Iterator[Projector]:
    """A projector running in a thread, waiting until it owns its partitions."""
    p = Projector(settings).start()
    if not p.ready.wait(30):
        p.stop()
        pytest.fail("the projector was not assigned its partitions within 30s")
    yield p
    p.stop()


@pytest.fixture
def spawn_projector(settings: Settings) -> Iterator[Callable[..., ProjectorProcess]]:
    """Start projector processes; all are stopped at the end of the test."""
    started: list[ProjectorProcess] = []

    def spawn(**env: str) -> ProjectorProcess:
        p = ProjectorProcess(settings, **env)
        started.append(p)
        return p

    yield spawn
    for p in started:
        p.stop()
