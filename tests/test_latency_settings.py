"""The projector's fetch wait (issue 11, aim 3): a setting of its own, reaching the projector's intake
consumer only, bounded, and winning over the deployment-wide Kafka settings (docs/perf-latency.md)."""

from __future__ import annotations

import json

import pytest

from eventstore.core.errors import ConfigurationError
from eventstore.core.settings import Settings
from eventstore.kafka.config import CONSUMER_DEFAULTS, consumer_config, projector_consumer_config

SERVERS = {"EVENTSTORE_DATABASE_URL": "postgresql://x@db/es", "EVENTSTORE_KAFKA_BOOTSTRAP": "kafka:9092"}


def test_the_projector_consumer_takes_the_fetch_wait_setting_and_other_consumers_do_not() -> None:
    default = Settings.from_env(SERVERS)
    assert projector_consumer_config(default, "g")["fetch.wait.max.ms"] == default.projector_fetch_wait_ms
    s = Settings.from_env({**SERVERS, "EVENTSTORE_PROJECTOR_FETCH_WAIT_MS": "2"})
    config = projector_consumer_config(s, "g")
    assert config["fetch.wait.max.ms"] == 2 and config["group.id"] == "g"
    assert consumer_config(s, "g")["fetch.wait.max.ms"] == CONSUMER_DEFAULTS["fetch.wait.max.ms"]


def test_the_setting_wins_over_the_deployment_wide_kafka_config() -> None:
    s = Settings.from_env({**SERVERS, "EVENTSTORE_PROJECTOR_FETCH_WAIT_MS": "3",
                           "EVENTSTORE_KAFKA_CONFIG": json.dumps({"fetch.wait.max.ms": 100, "client.id": "x"})})
    config = projector_consumer_config(s, "g")
    assert (config["fetch.wait.max.ms"], config["client.id"]) == (3, "x")
    assert consumer_config(s, "g")["fetch.wait.max.ms"] == 100  # the deployment's choice for other consumers


@pytest.mark.parametrize("value", ["0", "501", "fast"])
def test_a_fetch_wait_out_of_range_is_refused_naming_the_variable(value: str) -> None:
    # 0 makes tansu deliver nothing at all (bench latency's probes); above 500 ms is an outage, not a setting
    with pytest.raises(ConfigurationError, match="EVENTSTORE_PROJECTOR_FETCH_WAIT_MS"):
        Settings.from_env({**SERVERS, "EVENTSTORE_PROJECTOR_FETCH_WAIT_MS": value})


def test_the_projector_consumer_bounds_its_prefetch_and_the_deployment_can_change_it() -> None:
    """The prefetch bound keeps the projector's RSS flat (docs/perf-memory.md); other consumers keep
    librdkafka's default, and EVENTSTORE_KAFKA_CONFIG still decides."""
    default = Settings.from_env(SERVERS)
    assert projector_consumer_config(default, "g")["queued.max.messages.kbytes"] == 8192
    assert "queued.max.messages.kbytes" not in consumer_config(default, "g")
    s = Settings.from_env({**SERVERS, "EVENTSTORE_KAFKA_CONFIG": json.dumps({"queued.max.messages.kbytes": 65536})})
    assert projector_consumer_config(s, "g")["queued.max.messages.kbytes"] == 65536


def test_a_subscribers_consumer_takes_its_own_fetch_wait_setting() -> None:
    """EVENTSTORE_SUBSCRIBER_FETCH_WAIT_MS reaches the committed-topic consumer only, wins over the
    deployment-wide Kafka settings, and one subscriber's own kafka_config wins over it."""
    from eventstore.kafka.config import subscriber_consumer_config

    default = Settings.from_env(SERVERS)
    assert subscriber_consumer_config(default, "g")["fetch.wait.max.ms"] == CONSUMER_DEFAULTS["fetch.wait.max.ms"]
    s = Settings.from_env({**SERVERS, "EVENTSTORE_SUBSCRIBER_FETCH_WAIT_MS": "2",
                           "EVENTSTORE_KAFKA_CONFIG": json.dumps({"fetch.wait.max.ms": 100})})
    assert subscriber_consumer_config(s, "g")["fetch.wait.max.ms"] == 2
    assert subscriber_consumer_config(s, "g", **{"fetch.wait.max.ms": 7})["fetch.wait.max.ms"] == 7
    assert projector_consumer_config(s, "g")["fetch.wait.max.ms"] == s.projector_fetch_wait_ms
    assert consumer_config(s, "g")["fetch.wait.max.ms"] == 100
    with pytest.raises(ConfigurationError, match="EVENTSTORE_SUBSCRIBER_FETCH_WAIT_MS"):
        Settings.from_env({**SERVERS, "EVENTSTORE_SUBSCRIBER_FETCH_WAIT_MS": "0"})


def test_a_subscriber_builds_its_consumer_from_the_setting(settings: Settings,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The Subscriber's consumer is made from subscriber_consumer_config (checked on the config it passes)."""
    import consumers.subscriber as sub

    seen: list[dict[str, object]] = []

    class Refused(Exception):
        pass

    def capture(config: dict[str, object]) -> None:
        seen.append(config)
        raise Refused

    monkeypatch.setattr(sub, "Consumer", capture)
    s = sub.Subscriber("fw", settings=settings.replace(subscriber_fetch_wait_ms=3), catch_up_from_db=False)
    with pytest.raises(Refused):
        s._follow()
    assert seen and seen[0]["fetch.wait.max.ms"] == 3
