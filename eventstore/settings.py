"""One settings object for every process (agent SDK, projector, CLI), read from the environment.

Names are documented in the README. When neither server is named, the CLI starts the embedded
default servers and fills these in itself.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from eventstore.errors import ConfigurationError

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


@dataclass(frozen=True)
class Settings:
    """Where the servers are, how topics are named, and the knobs of the projector."""

    database_url: str | None = None
    kafka_bootstrap: str | None = None
    namespace: str = "eventstore"
    kafka_config: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    app_modules: tuple[str, ...] = ("eventstore.examples.inventory",)
    intake_partitions: int = 8
    projector_group: str = ""  # default: "<namespace>.projector", so namespaces never share a group
    batch_size: int = 2000
    batch_wait_ms: int = 0

    def __post_init__(self) -> None:
        if not _NAMESPACE_RE.match(self.namespace):
            raise ConfigurationError(
                f"EVENTSTORE_NAMESPACE={self.namespace!r} is not a valid topic prefix "
                "(letters, digits, '.', '_', '-'; at most 100 characters)"
            )
        if self.batch_wait_ms < 0:
            raise ConfigurationError(f"EVENTSTORE_BATCH_WAIT_MS must be 0 or more, got {self.batch_wait_ms}")
        if self.batch_size < 1:
            raise ConfigurationError(f"EVENTSTORE_BATCH_SIZE must be at least 1, got {self.batch_size}")
        if not self.projector_group:
            object.__setattr__(self, "projector_group", f"{self.namespace}.projector")
        if self.intake_partitions < 1:
            raise ConfigurationError(
                f"EVENTSTORE_INTAKE_PARTITIONS must be at least 1, got {self.intake_partitions}"
            )

    @property
    def intake_topic(self) -> str:
        return f"{self.namespace}.intake"

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.namespace}.dead-letter"

    @property
    def committed_topic(self) -> str:
        return f"{self.namespace}.committed"

    @property
    def rejections_topic(self) -> str:
        return f"{self.namespace}.rejections"

    def require_servers(self) -> tuple[str, str]:
        """Both server addresses, or a ConfigurationError naming the missing variable."""
        if not self.database_url:
            raise ConfigurationError(
                "EVENTSTORE_DATABASE_URL is not set; point it at PostgreSQL or run `eventstore dev`"
            )
        if not self.kafka_bootstrap:
            raise ConfigurationError(
                "EVENTSTORE_KAFKA_BOOTSTRAP is not set; point it at a Kafka broker or run `eventstore dev`"
            )
        return self.database_url, self.kafka_bootstrap

    def with_servers(self, database_url: str, kafka_bootstrap: str) -> Settings:
        return replace(self, database_url=database_url, kafka_bootstrap=kafka_bootstrap)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``EVENTSTORE_*`` variables; malformed values raise ConfigurationError naming the variable."""
        env = os.environ if environ is None else environ
        kwargs: dict[str, object] = {}
        if v := env.get("EVENTSTORE_DATABASE_URL"):
            kwargs["database_url"] = v
        if v := env.get("EVENTSTORE_KAFKA_BOOTSTRAP"):
            kwargs["kafka_bootstrap"] = v
        if v := env.get("EVENTSTORE_NAMESPACE"):
            kwargs["namespace"] = v
        if v := env.get("EVENTSTORE_KAFKA_CONFIG"):
            try:
                parsed = json.loads(v)
            except json.JSONDecodeError as e:
                raise ConfigurationError(f"EVENTSTORE_KAFKA_CONFIG is not valid JSON: {e}") from e
            if not isinstance(parsed, dict):
                raise ConfigurationError("EVENTSTORE_KAFKA_CONFIG must be a JSON object of client settings")
            kwargs["kafka_config"] = parsed
        if (v := env.get("EVENTSTORE_APP_MODULES")) is not None:
            kwargs["app_modules"] = tuple(m.strip() for m in v.split(",") if m.strip())
        if v := env.get("EVENTSTORE_PROJECTOR_GROUP"):
            kwargs["projector_group"] = v
        for name, key in (
            ("EVENTSTORE_INTAKE_PARTITIONS", "intake_partitions"),
            ("EVENTSTORE_BATCH_SIZE", "batch_size"),
            ("EVENTSTORE_BATCH_WAIT_MS", "batch_wait_ms"),
        ):
            if v := env.get(name):
                try:
                    kwargs[key] = int(v)
                except ValueError as e:
                    raise ConfigurationError(f"{name}={v!r} is not an integer") from e
        return cls(**kwargs)  # type: ignore[arg-type]
