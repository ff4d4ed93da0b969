"""Topic administration for operators: read the partition counts of existing topics and create
missing ones with an explicit replication factor and topic configs (``eventstore topics create``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from eventstore.core.errors import BrokerError
from eventstore.core.settings import Settings
from eventstore.kafka.config import _admin_subset


@dataclass(frozen=True)
class TopicSpec:
    """A topic as the deployment wants it."""

    name: str
    partitions: int
    replication_factor: int = -1  # -1: the broker's default.replication.factor
    config: Mapping[str, str] = field(default_factory=dict)


def _admin(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.require_kafka(), **_admin_subset(settings.kafka_config)})


def partition_counts(settings: Settings, names: Sequence[str], timeout: float = 15.0) -> dict[str, int]:
    """Partition count of each named topic that exists (absent topics are left out)."""
    try:
        meta = _admin(settings).list_topics(timeout=timeout)
    except KafkaException as e:
        raise BrokerError(f"cannot reach the Kafka broker at {settings.kafka_bootstrap}: {e}; "
                          "check EVENTSTORE_KAFKA_BOOTSTRAP and EVENTSTORE_KAFKA_CONFIG") from e
    return {n: len(meta.topics[n].partitions) for n in names if n in meta.topics and meta.topics[n].error is None}


def create_topics(settings: Settings, specs: Sequence[TopicSpec], timeout: float = 30.0) -> list[str]:
    """Create the topics; returns the names another process created first (already existing)."""
    if not specs:
        return []
    new = [NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor,
                    config=dict(s.config)) for s in specs]
    raced: list[str] = []
    admin = _admin(settings)  # kept referenced: the futures fail if the client is collected first
    for name, fut in admin.create_topics(new, request_timeout=timeout).items():
        try:
            fut.result(timeout)
        except KafkaException as e:
            if e.args and isinstance(e.args[0], KafkaError) and e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                raced.append(name)
                continue
            raise BrokerError(f"could not create topic {name!r}: {e}; check the replication factor against "
                              "the number of brokers and the principal's CREATE permission") from e
    return raced
