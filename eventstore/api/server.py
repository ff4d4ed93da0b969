"""Run the API with uvicorn: in the foreground (``eventstore serve``) or in a background thread
(``eventstore dev`` and the tests)."""

from __future__ import annotations

import threading
import time

import uvicorn

from eventstore.api.app import create_app
from eventstore.core.errors import ConfigurationError
from eventstore.core.settings import Settings


def serve(settings: Settings, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    print(f"eventstore API on http://{host}:{port}/ (OpenAPI at /docs, metrics at /metrics); Ctrl-C stops it",
          flush=True)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")


class ServerThread:
    """The API in a daemon thread; ``url`` is set once it listens (port 0 picks a free port)."""

    def __init__(self, settings: Settings, *, host: str = "127.0.0.1", port: int = 0) -> None:
        config = uvicorn.Config(create_app(settings), host=host, port=port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="eventstore-api", daemon=True)
        self.url = ""

    def start(self, timeout: float = 20.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise ConfigurationError("the HTTP API did not start (is the port free?)")
            time.sleep(0.02)
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
