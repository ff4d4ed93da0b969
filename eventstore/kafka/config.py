"""Thin Kafka adapter: client configurations from Settings, topic creation, error conversion.

No client lets the broker create a topic implicitly (``allow.auto.create.topics`` is off for
producers and consumers): an implicitly created topic gets the broker's default partition count, and
a recreated intake topic would restart at offset 0 below the offsets stored in PostgreSQL. Topics are
created explicitly, with the configured counts, by :func:`ensure_topics`, which also refuses an
existing topic whose partition count differs from the configured one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from eventstore.core.errors import BrokerError, ConfigurationError
from eventstore.core.settings import Settings

log = logging.getLogger(__name__)

# Keys hash with murmur2 like the Java client, so every producer of a stream picks the same partition.
PRODUCER_DEFAULTS: Mapping[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 1,
    "partitioner": "murmur2_random",
    "compression.type": "none",
    "allow.auto.create.topics": False,
}
# An agent's producer batches for load: a message produced while others are still on their way waits up
# to linger.ms to share a produce request with them (the broker's CPU goes mostly to taking requests);
# the SDK sends at once (its poller thread flushes) a sparse emit (the previous emit 0.5 ms ago or
# more), every emit_and_wait and the end of every emit_many batch, so a lone event is
# not held back. Failed deliveries only call back into Python.
AGENT_PRODUCER: Mapping[str, Any] = {"linger.ms": 5, "delivery.report.only.error": True}
# The publisher's producer (committed topic) sends each page at once: it no longer flushes every page (it
# pipelines them, eventstore.projection.publisher), and while a request is in flight the next messages batch
# up by themselves; failed deliveries only call back into Python.
COMMITTED_PRODUCER: Mapping[str, Any] = {"linger.ms": 0, "delivery.report.only.error": True}
# fetch.wait.max.ms bounds latency on brokers (tansu) that do not answer a waiting fetch early.
# A small max.poll.interval.ms keeps the embedded broker's JoinGroup from stalling; a batch
# takes milliseconds, far below it.
CONSUMER_DEFAULTS: Mapping[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "allow.auto.create.topics": False,
    "fetch.wait.max.ms": 10,
    "max.poll.interval.ms": 6000,
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 1000,
}

# The projector's consumer prefetches at most 8 MiB per partition queue instead of librdkafka's 64 MiB:
# with the default its RSS crept about 1.3 MiB per 100,000 events over a 1,000,000-event run as the
# prefetch queues filled behind a backlog; with 8 MiB it stayed flat (peak 117 MiB), and drains of a
# pre-filled topic ran as fast, alternated (docs/perf-memory.md).
PROJECTOR_CONSUMER: Mapping[str, Any] = {"queued.max.messages.kbytes": 8192}


def producer_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    _, bootstrap = settings.require_servers()
    return {"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS, **settings.kafka_config, **extra}


def agent_producer_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """The SDK's producer: :data:`PRODUCER_DEFAULTS` with :data:`AGENT_PRODUCER`; the deployment's
    ``EVENTSTORE_KAFKA_CONFIG`` still overrides both."""
    _, bootstrap = settings.require_servers()
    return {"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS, **AGENT_PRODUCER, **settings.kafka_config, **extra}


def committed_producer_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """The publisher's producer: :data:`PRODUCER_DEFAULTS` with :data:`COMMITTED_PRODUCER`; the deployment's
    ``EVENTSTORE_KAFKA_CONFIG`` still overrides both."""
    _, bootstrap = settings.require_servers()
    return {"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS, **COMMITTED_PRODUCER, **settings.kafka_config,
            **extra}


def consumer_config(settings: Settings, group: str, **extra: Any) -> dict[str, Any]:
    _, bootstrap = settings.require_servers()
    return {"bootstrap.servers": bootstrap, "group.id": group, **CONSUMER_DEFAULTS,
            **settings.kafka_config, **extra}


def projector_consumer_config(settings: Settings, group: str, **extra: Any) -> dict[str, Any]:
    """The projector's intake consumer: :func:`consumer_config` with ``fetch.wait.max.ms`` from
    ``EVENTSTORE_PROJECTOR_FETCH_WAIT_MS`` (more specific, so it wins over ``EVENTSTORE_KAFKA_CONFIG``).
    On a broker that answers a waiting fetch only when the wait ends (tansu), this wait is most of the
    broker's share of emit -> outcome latency; other consumers keep :data:`CONSUMER_DEFAULTS`. It also
    takes :data:`PROJECTOR_CONSUMER` (the deployment's ``EVENTSTORE_KAFKA_CONFIG`` overrides that)."""
    _, bootstrap = settings.require_servers()
    return {"bootstrap.servers": bootstrap, "group.id": group, **CONSUMER_DEFAULTS, **PROJECTOR_CONSUMER,
            **settings.kafka_config, "fetch.wait.max.ms": settings.projector_fetch_wait_ms, **extra}


def subscriber_consumer_config(settings: Settings, group: str, **extra: Any) -> dict[str, Any]:
    """A subscriber's committed-topic consumer: :func:`consumer_config` with ``fetch.wait.max.ms`` from
    ``EVENTSTORE_SUBSCRIBER_FETCH_WAIT_MS`` (more specific, so it wins over ``EVENTSTORE_KAFKA_CONFIG``);
    ``extra`` (one subscriber's own settings) wins over both."""
    _, bootstrap = settings.require_servers()
    return {"bootstrap.servers": bootstrap, "group.id": group, **CONSUMER_DEFAULTS, **settings.kafka_config,
            "fetch.wait.max.ms": settings.subscriber_fetch_wait_ms, **extra}


def ensure_topics(settings: Settings, topics: Mapping[str, int], timeout: float = 15.0) -> None:
    """Create topics that do not exist yet (name -> partitions); an existing topic with another
    partition count is a ConfigurationError (a stream would change partitions and lose its order)."""
    _, bootstrap = settings.require_servers()
    admin = AdminClient({"bootstrap.servers": bootstrap, **_admin_subset(settings.kafka_config)})
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as e:
        raise BrokerError(f"cannot reach the Kafka broker at {bootstrap}: {e}") from e
    for name, n in topics.items():
        meta = existing.get(name)
        if meta is not None and meta.error is None and len(meta.partitions) != n:
            raise ConfigurationError(
                f"topic {name!r} has {len(meta.partitions)} partitions but {n} are configured "
                f"(EVENTSTORE_INTAKE_PARTITIONS for the intake topic; 1 for the others); recreate the topic "
                "with the configured count or change the setting to match, then see docs/faults.md")
    wanted = [NewTopic(name, num_partitions=n, replication_factor=1 if "127.0.0.1" in bootstrap else -1)
              for name, n in topics.items() if name not in existing or existing[name].error is not None]
    if not wanted:
        return
    for name, fut in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            fut.result(timeout)
        except KafkaException as e:
            if e.args and isinstance(e.args[0], KafkaError) and e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise BrokerError(f"could not create topic {name!r}: {e}") from e


def pipeline_topics(settings: Settings) -> dict[str, int]:
    """The four topics of a deployment with their configured partition counts. Committed, dead-letter
    and rejections have one partition: one global order for subscribers."""
    return {settings.intake_topic: settings.intake_partitions, settings.committed_topic: 1,
            settings.dead_letter_topic: 1, settings.rejections_topic: 1}


def _admin_subset(config: Mapping[str, Any]) -> dict[str, Any]:
    """Security and connection settings apply to the admin client too; producer/consumer knobs do not."""
    prefixes = ("security.", "sasl.", "ssl.", "client.id", "socket.", "broker.")
    return {k: v for k, v in config.items() if k.startswith(prefixes)}
