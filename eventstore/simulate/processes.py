"""Projectors as ``eventstore project`` processes, the way production runs them, so a fault can be a
real SIGKILL; a supervisor restarts a primary projector that ended, like systemd or Kubernetes would,
and remembers whether the end was ours (a fault) or the projector's own (a broken promise)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from eventstore.core.exitcodes import EXIT_CONFIG
from eventstore.core.settings import Settings

RESTART_DELAY = 1.0


def projector_env(settings: Settings) -> dict[str, str]:
    """The environment of a projector process for ``settings`` (secrets stay in the environment)."""
    db, kafka = settings.require_servers()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    env.update({
        "EVENTSTORE_DATABASE_URL": db, "EVENTSTORE_KAFKA_BOOTSTRAP": kafka,
        "EVENTSTORE_NAMESPACE": settings.namespace,
        "EVENTSTORE_INTAKE_PARTITIONS": str(settings.intake_partitions),
        "EVENTSTORE_BATCH_SIZE": str(settings.batch_size),
        "EVENTSTORE_APP_MODULES": ",".join(settings.app_modules),
    })
    return env


class ProjectorProcess:
    """One ``python -m eventstore.cli -v project``; the last lines of its output are kept."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.name = name
        self.killed = False
        self.proc = subprocess.Popen([sys.executable, "-m", "eventstore.cli", "-v", "project"],
                                     env=projector_env(settings), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.lines: deque[str] = deque(maxlen=200)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        out = self.proc.stdout
        if out is None:
            return
        with out:
            for raw in out:
                self.lines.append(raw.decode(errors="replace").rstrip())

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no goodbye, no flush; the database transaction in flight is lost."""
        self.killed = True
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return int(self.proc.returncode)


@dataclass(frozen=True)
class UnexpectedExit:
    name: str
    code: int
    tail: str


class ProjectorSupervisor:
    """Keeps a primary projector running; restarts it after it ends, recording ends we did not cause."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.primary = ProjectorProcess(settings, "projector-1")
        self.extra: ProjectorProcess | None = None
        self.starts = 1
        self.unexpected: list[UnexpectedExit] = []
        # Exits with EXIT_CONFIG at start while a server was unreachable: a projector fails fast when it
        # cannot start; the supervisor restarts it (after RESTART_DELAY), as an orchestrator would.
        self.refused_starts = 0
        self._ended_at: float | None = None
        self._lock = threading.Lock()

    def check(self) -> None:
        """Restart a primary that ended; note it if the end was not a SIGKILL of ours."""
        with self._lock:
            for attr in ("primary", "extra"):
                p: ProjectorProcess | None = getattr(self, attr)
                if p is None or p.running:
                    continue
                if attr == "primary" and not p.killed:
                    if self._ended_at is None:
                        self._ended_at = time.monotonic()
                    if time.monotonic() - self._ended_at < RESTART_DELAY:
                        continue
                self._ended_at = None
                code = int(p.proc.returncode or 0)
                if code == EXIT_CONFIG:
                    self.refused_starts += 1
                elif not p.killed:
                    self.unexpected.append(UnexpectedExit(p.name, code, "\n".join(list(p.lines)[-15:])))
                if attr == "primary":
                    self.starts += 1
                    self.primary = ProjectorProcess(self.settings, f"projector-{self.starts}")
                else:
                    self.extra = None

    def kill_primary(self) -> None:
        with self._lock:
            self.primary.kill()
        self.check()

    def add_member(self) -> None:
        """A second group member: the group rebalances the intake partitions over both."""
        with self._lock:
            if self.extra is None:
                self.extra = ProjectorProcess(self.settings, "projector-extra")

    def remove_member(self) -> None:
        """Stop the second member cleanly (SIGTERM): the group rebalances back."""
        with self._lock:
            extra, self.extra = self.extra, None
        if extra is not None:
            code = extra.stop()
            if code != 0:
                self.unexpected.append(UnexpectedExit(extra.name, code, "\n".join(list(extra.lines)[-15:])))

    def stop(self) -> None:
        self.remove_member()
        with self._lock:
            code = self.primary.stop()
            if code != 0 and not self.primary.killed:
                self.unexpected.append(UnexpectedExit(self.primary.name, code,
                                                      "\n".join(list(self.primary.lines)[-15:])))


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` until it returns true or ``timeout`` passes; whether it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False
