"""Where a process finds its servers: the environment, else a running ``eventstore dev`` in this folder.

``eventstore dev`` writes the servers it runs to ``.eventstore/dev.json`` (folder: ``EVENTSTORE_STATE_DIR``)
so that other commands and SDK clients started in the same project folder find them without exports.
Settings are resolved here once, at the edge, and passed down as one object.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from eventstore.core.errors import ConfigurationError
from eventstore.core.settings import Settings


def state_dir() -> Path:
    return Path(os.environ.get("EVENTSTORE_STATE_DIR", ".eventstore"))


def dev_file() -> Path:
    return state_dir() / "dev.json"


def write_dev_file(settings: Settings, credentials: dict[str, str] | None = None) -> None:
    """Record the servers of this ``eventstore dev`` (private to the user: it holds the database URL and
    the credentials of the agents dev registered for local work)."""
    path = dev_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"database_url": settings.require_database(), "kafka_bootstrap": settings.kafka_bootstrap,
                   "pid": os.getpid(), "credentials": credentials or {}}, f)


def remove_dev_file() -> None:
    with contextlib.suppress(FileNotFoundError):
        dev_file().unlink()


def running_dev() -> dict[str, str] | None:
    """The servers of a live ``eventstore dev`` in this folder, or None."""
    path = dev_file()
    try:
        data = json.loads(path.read_text())
        os.kill(int(data["pid"]), 0)
        return {"database_url": str(data["database_url"]), "kafka_bootstrap": str(data["kafka_bootstrap"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def dev_credential(agent_id: str) -> str | None:
    """The credential a running ``eventstore dev`` in this folder registered for ``agent_id``, if any."""
    if running_dev() is None:
        return None
    try:
        found = json.loads(dev_file().read_text()).get("credentials", {}).get(agent_id)
    except (OSError, ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


def configured(*, need_kafka: bool = True, environ: dict[str, str] | None = None) -> Settings:
    """Settings from the environment, completed from a running ``eventstore dev`` if needed.

    Commands that use only PostgreSQL (``migrate``, ``verify``) pass ``need_kafka=False``.
    """
    settings = Settings.from_env(environ)
    if settings.database_url is not None and (settings.kafka_bootstrap or not need_kafka):
        return settings
    dev = running_dev()
    if dev is not None:
        return settings.with_servers(
            settings.database_url.get_secret_value() if settings.database_url else dev["database_url"],
            settings.kafka_bootstrap or dev["kafka_bootstrap"])
    missing = "EVENTSTORE_DATABASE_URL" + (" and EVENTSTORE_KAFKA_BOOTSTRAP" if need_kafka else "")
    raise ConfigurationError(f"no servers configured: set {missing}, or start `eventstore dev` in this folder")


def resolve_settings(settings: Settings | str | None, *, need_kafka: bool = False) -> Settings:
    """The one Settings object a component works with: the one given, a database URL given alone,
    or the environment (completed from a running ``eventstore dev``)."""
    if isinstance(settings, Settings):
        return settings
    if isinstance(settings, str):
        return Settings.from_env().with_servers(settings, None) if not need_kafka else \
            Settings.from_env().with_servers(settings, Settings.from_env().kafka_bootstrap)
    return configured(need_kafka=need_kafka)
