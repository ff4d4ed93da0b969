"""High watermarks of a topic's partitions, for lag (stored projector offsets vs what the broker holds)."""

from __future__ import annotations

from confluent_kafka import Consumer, KafkaException, TopicPartition

from eventstore.core.errors import BrokerError
from eventstore.core.settings import Settings
from eventstore.kafka.config import consumer_config


def high_watermarks(settings: Settings, topic: str, timeout: float = 5.0) -> dict[int, int]:
    """partition -> high watermark (the next offset to be written); {} if the topic does not exist."""
    consumer = Consumer(consumer_config(settings, f"{settings.namespace}.lag-probe", **{"enable.auto.commit": False}))
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            return {}
        out = {}
        for p in sorted(meta.partitions):
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout, cached=False)
            out[p] = int(high)
        return out
    except KafkaException as e:
        raise BrokerError(f"cannot read the watermarks of {topic!r}: {e}") from e
    finally:
        consumer.close()
