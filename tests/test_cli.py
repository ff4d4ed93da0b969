"""The command line as a user runs it: ``eventstore dev`` serves, other commands find it, Ctrl-C stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eventstore.embedded import free_port


def run(args: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    return subprocess.run([sys.executable, "-m", "eventstore.cli", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)


@pytest.mark.slow
def test_dev_serves_other_commands_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    api_port = free_port()
    dev = subprocess.Popen([sys.executable, "-m", "eventstore.cli", "dev", "--broker-port", str(free_port()),
                            "--api-port", str(api_port)],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert dev.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any("Ctrl-C stops" in line for line in seen):
            line = dev.stdout.readline()
            if not line:
                break
            seen.append(line)
        assert any("export EVENTSTORE_DATABASE_URL=" in line for line in seen), seen
        assert any(f"HTTP API and live page on http://127.0.0.1:{api_port}/" in line for line in seen), seen
        verify = run(["verify"], tmp_path)
        assert verify.returncode == 0 and "hash chain verified" in verify.stdout, verify
        killed = run(["agents", "kill", "rogue", "--reason", "test"], tmp_path)
        assert killed.returncode == 0 and "killed" in killed.stdout, killed
        verify = run(["verify"], tmp_path)
        assert "lock_events intact: 1 rows" in verify.stdout  # the kill is history, in the lock chain
        dev.send_signal(signal.SIGINT)
        rest, _ = dev.communicate(timeout=60)
        assert dev.returncode == 0 and "stopped cleanly" in rest
        assert (tmp_path / ".eventstore" / "pg" / "PG_VERSION").exists()  # data kept for the next run
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.communicate()


def test_commands_without_servers_say_what_to_do(tmp_path: Path) -> None:
    result = run(["verify"], tmp_path)
    assert result.returncode == 3  # EXIT_CONFIG: configuration missing
    assert "EVENTSTORE_DATABASE_URL" in result.stderr and "Traceback" not in result.stderr
