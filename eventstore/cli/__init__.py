"""The command line (``eventstore``), the embedded development servers and the demo."""

from eventstore.cli.main import main

__all__ = ["main"]
