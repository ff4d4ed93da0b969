"""A component whose ``run()`` loop can also live in a daemon thread: start, stop, context manager.

The projector, the publisher and subscribers share this lifecycle; ``run()`` returns once
``self._stop`` is set.
"""

from __future__ import annotations

import threading
from typing import Self


class BackgroundRunner:
    """Subclasses implement ``run()``, watch ``self._stop``, and may prepare in ``_before_start()``."""

    stop_timeout = 10.0

    def __init__(self, thread_name: str) -> None:
        self._thread_name = thread_name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        raise NotImplementedError

    def _before_start(self) -> None:
        """Work that must be done (and may fail loudly) before the thread starts."""

    def start(self) -> Self:
        self._before_start()
        self._thread = threading.Thread(target=self.run, name=self._thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.stop_timeout if timeout is None else timeout)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
