"""Servers for commands that may run without any: the configured ones, else fresh embedded ones."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from eventstore.core.errors import ConfigurationError
from eventstore.core.settings import Settings
from eventstore.discovery import configured
from eventstore.embedded import EmbeddedServers
from eventstore.postgres.migrate import upgrade


@contextlib.contextmanager
def servers_or_embedded() -> Iterator[Settings]:
    """The configured servers, or fresh ephemeral embedded ones (migrated) for the length of the block."""
    try:
        found: Settings | None = configured()
    except ConfigurationError:
        found = None
    if found is not None:
        yield found
        return
    with EmbeddedServers(None) as s:
        settings = Settings.from_env().with_servers(s.postgres.url, s.broker.bootstrap)
        upgrade(s.postgres.url)
        yield settings
