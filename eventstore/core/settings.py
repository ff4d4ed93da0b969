"""One settings object for every process (agent SDK, projector, CLI), read from ``EVENTSTORE_*``
environment variables once, at the edge (the CLI or an SDK constructor), and passed down whole.

Secrets (the password in the database URL, Kafka SASL/SSL secrets) are kept out of every ``repr``
and log line: the URL is a ``SecretStr`` and Kafka settings whose names mark them as secret are
masked when shown. Names and defaults are documented in docs/operations.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from eventstore.core.errors import ConfigurationError
from eventstore.core.limits import DEFAULT_MAX_COMMITTED_BYTES, DEFAULT_MAX_EVENT_BYTES

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_SECRET_KEY = re.compile(r"(password|secret|credential|token|(^|\.)key$)", re.IGNORECASE)
KafkaValue = str | int | float | bool
PREFIX = "EVENTSTORE_"


def mask_kafka_config(config: Mapping[str, KafkaValue]) -> dict[str, KafkaValue]:
    """The Kafka settings with secret values (passwords, keys, tokens) replaced by ``'**********'``."""
    return {k: ("**********" if _SECRET_KEY.search(k) else v) for k, v in config.items()}


class _MappingEnvSource(EnvSettingsSource):
    """The environment source reading a given mapping instead of ``os.environ`` (for tests and tools)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k.lower(): v for k, v in self._environ.items()}


class Settings(BaseSettings):
    """Where the servers are, how topics are named, and the knobs of the projector."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="ignore", env_ignore_empty=True,
                                      hide_input_in_errors=True)

    database_url: SecretStr | None = None
    kafka_bootstrap: str | None = None
    namespace: str = "eventstore"
    kafka_config: dict[str, KafkaValue] = Field(default_factory=dict)
    app_modules: Annotated[tuple[str, ...], NoDecode] = ("eventstore.examples.inventory",)
    intake_partitions: int = Field(default=8, ge=1)
    projector_group: str = ""  # default: "<namespace>.projector", so namespaces never share a group
    batch_size: int = Field(default=2000, ge=1)
    batch_wait_ms: int = Field(default=0, ge=0)
    # fetch.wait.max.ms of the projector's intake consumer (only). Brokers that do not answer a waiting
    # fetch early (tansu) hand a record over only when this wait ends, so it bounds emit -> outcome
    # latency; a shorter wait costs the broker CPU, idle and under load. Measured on tansu
    # (docs/perf-latency.md): 10 ms p50 3.7 ms, 5 ms 2.3 ms, 2 ms 1.4 ms at the broker; idle 4.6%, 7.0%,
    # 11% of a core; 405, 492, 491 µs per message at 1,000 sparse messages/s.
    projector_fetch_wait_ms: int = Field(default=5, ge=1, le=500)
    # fetch.wait.max.ms of a subscriber's committed-topic consumer (Subscriber, `eventstore follow`, an
    # agent's follow()): the broker's share of emit -> visible on tansu, as above (docs/perf-latency.md).
    subscriber_fetch_wait_ms: int = Field(default=10, ge=1, le=500)
    # Subscribers also LISTEN for the projector's commit notice and read newly committed events straight
    # from the log, not waiting for the publisher and the broker (lower emit -> visible; one indexed log
    # read per woken batch per subscriber: opt-in; docs/operations.md, docs/perf-subscribers.md).
    subscriber_wake_on_commit: bool = False
    alert_webhook: str | None = None
    # History anchors (eventstore anchor / verify --anchor): the Ed25519 key file, kept outside the
    # database; the JSON-lines file anchors are appended to; optionally a topic they are also sent to.
    anchor_key: str | None = None
    anchor_file: str = "eventstore-anchors.jsonl"
    anchor_topic: str | None = None
    # Thresholds of `eventstore check` and /readyz (docs/auditors.md).
    check_max_lag_seconds: float = Field(default=60.0, gt=0)  # committed-topic publisher behind the log
    check_max_unkeyed_events: int = Field(default=0, ge=0)  # events per agent without an idempotency key
    check_max_lease_ttl_seconds: float = Field(default=3600.0, gt=0)  # longer is a lock nobody expires
    ready_max_intake_lag: int = Field(default=1000, ge=0)  # intake messages not yet projected
    # Size limits (docs/faults.md): an intake envelope, and a committed-topic message. Kafka's default
    # message.max.bytes is 1,048,588 and librdkafka's is 1,000,000; both stay below with room for the
    # key, headers and batch framing. A committed event that still does not fit goes out as a stub
    # that subscribers complete from PostgreSQL.
    max_event_bytes: int = Field(default=DEFAULT_MAX_EVENT_BYTES, ge=1024)
    max_committed_bytes: int = Field(default=DEFAULT_MAX_COMMITTED_BYTES, ge=1024)
    # A retry loop (the database away, a lock storm) lasting longer than this raises an alert.
    retry_alert_seconds: float = Field(default=30.0, gt=0)
    # The agent's credential for the SDK (``es1.<key id>.<secret>``, from `eventstore agents add`).
    agent_credential: SecretStr | None = None
    # The projector refuses unsigned events unless this is off (EVENTSTORE_AUTH=off: unsafe, any process
    # can then emit as any agent; docs/security.md).
    auth: bool = True

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what the caller passes: the environment is read once, explicitly, by from_env().
        return (init_settings,)

    @field_validator("app_modules", mode="before")
    @classmethod
    def _split_modules(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(m.strip() for m in v.split(",") if m.strip())
        return v

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        if not _NAMESPACE_RE.match(v):
            raise ValueError("not a valid topic prefix (letters, digits, '.', '_', '-'; at most 100 characters)")
        return v

    @field_validator("alert_webhook")
    @classmethod
    def _webhook(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return v

    @model_validator(mode="after")
    def _default_group(self) -> Settings:
        if not self.projector_group:
            object.__setattr__(self, "projector_group", f"{self.namespace}.projector")
        return self

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, (mask_kafka_config(value) if name == "kafka_config" else value)

    # -- derived names ---------------------------------------------------------------------------
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

    # -- servers ---------------------------------------------------------------------------------
    def require_database(self) -> str:
        """The database URL (a secret: never log it), or a ConfigurationError naming the variable."""
        if self.database_url is None:
            raise ConfigurationError(
                "EVENTSTORE_DATABASE_URL is not set; point it at PostgreSQL or run `eventstore dev`")
        return self.database_url.get_secret_value()

    def require_kafka(self) -> str:
        """The Kafka bootstrap servers, or a ConfigurationError naming the variable."""
        if not self.kafka_bootstrap:
            raise ConfigurationError(
                "EVENTSTORE_KAFKA_BOOTSTRAP is not set; point it at a Kafka broker or run `eventstore dev`")
        return self.kafka_bootstrap

    def require_servers(self) -> tuple[str, str]:
        """Both server addresses, or a ConfigurationError naming the missing variable."""
        return self.require_database(), self.require_kafka()

    def with_servers(self, database_url: str | None, kafka_bootstrap: str | None) -> Settings:
        return self.model_copy(update={
            "database_url": None if database_url is None else SecretStr(database_url),
            "kafka_bootstrap": kafka_bootstrap})

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed, validated like the original (a derived projector group
        follows a new namespace)."""
        data = {name: getattr(self, name) for name in type(self).model_fields}
        if "namespace" in changes and "projector_group" not in changes \
                and self.projector_group == f"{self.namespace}.projector":
            data["projector_group"] = ""
        data.update(changes)
        return _build(data)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``EVENTSTORE_*`` variables; malformed values raise ConfigurationError naming the variable."""
        try:
            values = _MappingEnvSource(cls, os.environ if environ is None else environ)()
        except (ValueError, SettingsError) as e:  # e.g. EVENTSTORE_KAFKA_CONFIG that is not JSON
            field = re.search(r'field "(\w+)"', str(e))
            name = f"{PREFIX}{field.group(1).upper()}" if field else "an EVENTSTORE_ variable"
            raise ConfigurationError(f"{name} cannot be parsed (a JSON value is expected): {e}") from e
        return _build(values)


def _build(data: Mapping[str, Any]) -> Settings:
    try:
        return Settings(**data)
    except ValidationError as e:
        raise ConfigurationError(_explain(e)) from e


def _explain(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        field = str(err["loc"][0]) if err["loc"] else "settings"
        parts.append(f"{PREFIX}{field.upper()}: {err['msg']}")
    return "invalid settings: " + "; ".join(parts)
