"""Does a partition really reach an offset? Asked by reading, because the end offset a broker reports
is not always exact (tansu answers ListOffsets with the end of the last record batch it knows by its
base offset, so a partition whose last batch holds many records looks shorter than it is)."""

from __future__ import annotations

import time
from collections.abc import Mapping

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from eventstore.core.settings import Settings
from eventstore.kafka.config import consumer_config


def partitions_reaching(settings: Settings, topic: str, wanted: Mapping[int, int], *, group: str,
                        timeout: float = 10.0) -> set[int]:
    """The partitions of ``wanted`` (partition -> offset n) that hold a message at offset n - 1, so that
    a stored next offset n is within the topic. A partition that is shorter (recreated, emptied) makes
    the consumer start over at its first offset, or deliver nothing; both count as not reaching."""
    todo = {p: n for p, n in wanted.items() if n > 0}
    reached = {p for p, n in wanted.items() if n <= 0}
    if not todo:
        return reached
    consumer = Consumer(consumer_config(settings, f"{group}.probe", **{"enable.partition.eof": True}))
    try:
        consumer.assign([TopicPartition(topic, p, n - 1) for p, n in todo.items()])
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            m = consumer.poll(0.2)
            if m is None or m.partition() not in todo:
                continue
            p = int(m.partition() or 0)
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    todo.pop(p)  # at the end before reaching offset n - 1: the partition is shorter
                continue
            if int(m.offset() or 0) >= todo[p] - 1:
                reached.add(p)
            todo.pop(p)
    except KafkaException:
        pass  # unknown: not confirmed
    finally:
        consumer.close()
    return reached
