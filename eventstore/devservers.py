"""Where the CLI finds its servers: the environment, else a running ``eventstore dev``, else embedded.

``eventstore dev`` writes the settings it serves to ``.eventstore/dev.json`` so that other commands
in the same project folder (``project``, ``migrate``, ``verify``) find them without exports.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from eventstore.embedded import EmbeddedServers
from eventstore.errors import ConfigurationError
from eventstore.migrate import upgrade
from eventstore.settings import Settings

STATE_DIR = Path(os.environ.get("EVENTSTORE_STATE_DIR", ".eventstore"))
DEV_FILE = STATE_DIR / "dev.json"


def write_dev_file(settings: Settings) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    DEV_FILE.write_text(json.dumps({"database_url": settings.database_url,
                                    "kafka_bootstrap": settings.kafka_bootstrap, "pid": os.getpid()}))


def remove_dev_file() -> None:
    with contextlib.suppress(FileNotFoundError):
        DEV_FILE.unlink()


def configured() -> Settings:
    """Settings from the environment, completed from a running ``eventstore dev`` if needed."""
    settings = Settings.from_env()
    if settings.database_url and settings.kafka_bootstrap:
        return settings
    if DEV_FILE.exists():
        data = json.loads(DEV_FILE.read_text())
        with contextlib.suppress(ProcessLookupError, KeyError):
            os.kill(int(data["pid"]), 0)
            return replace(settings, database_url=settings.database_url or data["database_url"],
                           kafka_bootstrap=settings.kafka_bootstrap or data["kafka_bootstrap"])
    raise ConfigurationError(
        "no servers configured: set EVENTSTORE_DATABASE_URL and EVENTSTORE_KAFKA_BOOTSTRAP, "
        "or start `eventstore dev` in this folder"
    )


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
