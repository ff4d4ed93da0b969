"""A component whose ``run()`` loop can also live in a daemon thread: start, stop, context manager.

The projector, the publisher and subscribers share this lifecycle; ``run()`` returns once
``self._stop`` is set. A thread that dies keeps its error in ``error``, so the process that owns it
can report it and exit non-zero instead of running on without the component.
"""

from __future__ import annotations

import logging
import threading
from typing import Self

from eventstore.core.errors import ComponentFailedError

log = logging.getLogger(__name__)


class BackgroundRunner:
    """Subclasses implement ``run()``, watch ``self._stop``, and may prepare in ``_before_start()``."""

    stop_timeout = 10.0

    def __init__(self, thread_name: str) -> None:
        self._thread_name = thread_name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.finished = threading.Event()

    def run(self) -> None:
        raise NotImplementedError

    def _before_start(self) -> None:
        """Work that must be done (and may fail loudly) before the thread starts."""

    def _main(self) -> None:
        try:
            self.run()
        except BaseException as e:  # kept for the owner; the thread ends either way
            self.error = e
            log.error("%s stopped: %s", self._thread_name, e, exc_info=e)
        finally:
            self.finished.set()

    def start(self) -> Self:
        self._before_start()
        self._thread = threading.Thread(target=self._main, name=self._thread_name, daemon=True)
        self._thread.start()
        return self

    @property
    def failed(self) -> bool:
        """True once the component's thread ended with an error."""
        return self.error is not None

    def raise_if_failed(self) -> None:
        """Raise ComponentFailedError (with the original as cause) if the thread died."""
        if self.error is not None:
            raise ComponentFailedError(f"{self._thread_name} stopped: {self.error}") from self.error

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.stop_timeout if timeout is None else timeout)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
