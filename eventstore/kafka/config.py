"""Thin Kafka adapter: client configurations from Settings, topic creation, error conversion."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from eventstore.core.errors import BrokerError
from eventstore.core.settings import Settings

log = logging.getLogger(__name__)

# Keys hash with murmur2 like the Java client, so every producer of a stream picks the same partition.
PRODUCER_DEFAULTS: Mapping[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 1,
    "partitioner": "murmur2_random",
    "compression.type": "none",
}
# fetch.wait.max.ms bounds latency on brokers (tansu) that do not answer a waiting fetch early.
# A small max.poll.interval.ms keeps the embedded broker's JoinGroup from stalling; a batch
# takes milliseconds, far below it.
CONSUMER_DEFAULTS: Mapping[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "fetch.wait.max.ms": 10,
    "max.poll.interval.ms": 6000,
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 1000,
}


def producer_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    _, bootstrap = settings.require_servers()
    return {"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS, **settings.kafka_config, **extra}


def consumer_config(settings: Settings, group: str, **extra: Any) -> dict[str, Any]:
    _, bootstrap = settings.require_servers()
    return {"bootstrap.servers": bootstrap, "group.id": group, **CONSUMER_DEFAULTS,
            **settings.kafka_config, **extra}


def ensure_topics(settings: Settings, topics: Mapping[str, int], timeout: float = 15.0) -> None:
    """Create topics that do not exist yet (name -> partitions); existing ones are left alone."""
    _, bootstrap = settings.require_servers()
    admin = AdminClient({"bootstrap.servers": bootstrap, **_admin_subset(settings.kafka_config)})
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as e:
        raise BrokerError(f"cannot reach the Kafka broker at {bootstrap}: {e}") from e
    wanted = [NewTopic(name, num_partitions=n, replication_factor=1 if "127.0.0.1" in bootstrap else -1)
              for name, n in topics.items() if name not in existing]
    if not wanted:
        return
    for name, fut in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            fut.result(timeout)
        except KafkaException as e:
            if e.args and isinstance(e.args[0], KafkaError) and e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise BrokerError(f"could not create topic {name!r}: {e}") from e


def _admin_subset(config: Mapping[str, Any]) -> dict[str, Any]:
    """Security and connection settings apply to the admin client too; producer/consumer knobs do not."""
    prefixes = ("security.", "sasl.", "ssl.", "client.id", "socket.", "broker.")
    return {k: v for k, v in config.items() if k.startswith(prefixes)}
