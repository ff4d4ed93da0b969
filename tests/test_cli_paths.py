"""Paper cuts of the command line and the SDK's discovery (issue 7), as a user meets them:
``eventstore rebuild`` of a read model from an application module, one-line errors with documented
exit codes (also for an unreachable database, without Kafka settings), ``eventstore demo`` twice against
one ``eventstore dev``, an SDK client finding that ``eventstore dev`` by itself, and secrets kept out of
every repr and log line."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from eventstore.core.exitcodes import EXIT_CONFIG, EXIT_OK, EXIT_USAGE
from eventstore.core.records import DirectEvent
from eventstore.core.settings import Settings
from eventstore.embedded import free_port
from eventstore.postgres import eventlog
from tests.app_events import DocumentTitled

ROOT = Path(__file__).resolve().parent.parent


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def cli(args: list[str], cwd: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eventstore", *args], cwd=cwd, env=clean_env(**env), text=True,
                          capture_output=True, timeout=timeout, check=False)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a failed command: exactly one line, the CLI's own, never a traceback."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eventstore: error: "), result.stderr
    return lines[0]


# -- rebuild of an application's read model ----------------------------------------------------------
def test_rebuild_finds_a_read_model_of_an_app_module(database_url: str, tmp_path: Path) -> None:
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        eventlog.append_direct(cur, [DirectEvent(f"doc-{d}", DocumentTitled(doc=d, title=t), "writer")
                                     for d, t in (("d1", "Draft"), ("d2", "Notes"), ("d1", "Final"))])
    done = cli(["rebuild", "document_titles"], tmp_path, EVENTSTORE_DATABASE_URL=database_url,
               EVENTSTORE_APP_MODULES="tests.app_events")
    assert done.returncode == EXIT_OK, done.stderr
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT doc, title FROM document_titles ORDER BY doc").fetchall()
    assert rows == [("d1", "Final"), ("d2", "Notes")]
    # Without the application module the model is unknown: one line, a configuration error.
    unknown = cli(["rebuild", "document_titles"], tmp_path, EVENTSTORE_DATABASE_URL=database_url)
    assert unknown.returncode == EXIT_CONFIG
    assert "document_titles" in one_line_error(unknown)


# -- errors: one line, documented exit codes -----------------------------------------------------------
@pytest.mark.parametrize("command", [["migrate"], ["verify"], ["rebuild", "inventory"],
                                     ["agents", "kill", "rogue", "--reason", "test"]])
def test_an_unreachable_database_is_one_line_and_exit_3(tmp_path: Path, command: list[str]) -> None:
    """No Kafka is configured: these commands use only PostgreSQL and must not ask for it."""
    url = f"postgresql://alice:s3cret-pw@127.0.0.1:{free_port()}/nowhere?connect_timeout=3"
    result = cli(command, tmp_path, EVENTSTORE_DATABASE_URL=url)
    assert result.returncode == EXIT_CONFIG, result
    line = one_line_error(result)
    assert "KAFKA" not in line  # it is the database that is missing, not a bootstrap it never uses
    assert "s3cret-pw" not in result.stderr + result.stdout  # the password never reaches the terminal


def test_usage_errors_exit_2_and_version_exits_0(tmp_path: Path) -> None:
    bad = cli(["no-such-command"], tmp_path)
    assert bad.returncode == EXIT_USAGE and "Traceback" not in bad.stderr
    version = cli(["--version"], tmp_path)
    assert version.returncode == EXIT_OK and version.stdout.strip()


# -- secrets ---------------------------------------------------------------------------------------------
def test_secrets_never_appear_in_a_repr_or_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    s = Settings.from_env({
        "EVENTSTORE_DATABASE_URL": "postgresql://app:db-Pa55word@db.example:5432/es",
        "EVENTSTORE_KAFKA_BOOTSTRAP": "kafka.example:9093",
        "EVENTSTORE_KAFKA_CONFIG": '{"sasl.mechanism": "PLAIN", "sasl.username": "app", '
                                   '"sasl.password": "kafka-Pa55word", "ssl.key.password": "key-Pa55word"}',
    })
    with caplog.at_level(logging.INFO):
        logging.getLogger("eventstore.test").info("settings: %s / %r", s, s)
    shown = "\n".join([repr(s), str(s), f"{s}", caplog.text, repr(s.database_url)])
    for secret in ("db-Pa55word", "kafka-Pa55word", "key-Pa55word"):
        assert secret not in shown
    assert "kafka.example:9093" in shown and "PLAIN" in shown  # what is not secret is still shown
    assert s.require_database().endswith("db-Pa55word@db.example:5432/es")  # and the real value is usable
    assert s.kafka_config["sasl.password"] == "kafka-Pa55word"


# -- against a running `eventstore dev` -------------------------------------------------------------------
@pytest.fixture(scope="module")
def dev_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``eventstore dev`` running in a fresh folder (as a user starts it), stopped with Ctrl-C at the end."""
    folder = tmp_path_factory.mktemp("devfolder")
    dev = subprocess.Popen([sys.executable, "-m", "eventstore", "dev", "--broker-port", str(free_port())],
                           cwd=folder, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert dev.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("Ctrl-C stops" in line for line in seen):
            line = dev.stdout.readline()
            if not line:
                break
            seen.append(line)
        assert any("Ctrl-C stops" in line for line in seen), seen
        yield folder
    finally:
        dev.send_signal(signal.SIGINT)
        try:
            dev.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            dev.kill()
            dev.communicate()


@pytest.mark.slow
def test_demo_twice_against_one_dev_is_right_both_times(dev_folder: Path) -> None:
    for run in (1, 2):
        result = cli(["demo"], dev_folder, timeout=240)
        assert result.returncode == EXIT_OK, (run, result.stdout[-2000:], result.stderr[-2000:])
        assert "final stock in the read model: 1 (correct)" in result.stdout, (run, result.stdout[-2000:])
        assert "WRONG" not in result.stdout and "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_sdk_finds_a_running_dev_by_itself(dev_folder: Path) -> None:
    script = textwrap.dedent("""
        import uuid
        from eventstore import AgentClient, Coordinator, Outcome
        from eventstore.examples.inventory import InventoryUpdated, stream_for

        sku = "DISC-" + uuid.uuid4().hex[:8]
        # No settings, no EVENTSTORE_ variables, no credential: order-agent is one of the agents
        # `eventstore dev` registers, and its credential comes from the dev state file too.
        with AgentClient("order-agent") as c:
            r = c.emit_and_wait(InventoryUpdated(sku=sku, quantity=4), stream_for(sku), timeout=60)
            assert r.status is Outcome.COMMITTED, r
            print("committed at version", c.stream_version(stream_for(sku), min_position=r.position))
        with Coordinator() as coord, coord.lease("disc", agent_id="order-agent") as lease:
            print("lease token", lease.token)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=dev_folder, env=clean_env(), text=True,
                            capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "committed at version 1" in result.stdout and "lease token" in result.stdout
