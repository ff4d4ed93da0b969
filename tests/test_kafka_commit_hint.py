"""The projector's Kafka offset commits (a hint for lag tooling; PostgreSQL holds the real offsets) are made at
most every ``kafka_commit_every`` seconds, not after every batch, and still reach the broker: during a steady
stream, and at stop."""

from __future__ import annotations

import time

import psycopg
from confluent_kafka import Consumer, TopicPartition

from eventstore import AgentClient, Outcome, Projector
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryAdjusted, stream_for
from eventstore.kafka.config import consumer_config
from tests.fix_projector import wait_until


def _kafka_offsets(settings: Settings, group: str) -> dict[int, int]:
    """The offsets the broker holds for the group on the intake topic (partition -> next offset)."""
    c = Consumer(consumer_config(settings, group))
    try:
        parts = [TopicPartition(settings.intake_topic, p) for p in range(settings.intake_partitions)]
        return {tp.partition: tp.offset for tp in c.committed(parts, timeout=10) if tp.offset >= 0}
    finally:
        c.close()


def _stored(settings: Settings, group: str) -> dict[int, int]:
    """The offsets PostgreSQL holds (the real ones) for the group, partitions with progress only."""
    with psycopg.connect(settings.require_database(), autocommit=True) as conn:
        rows = conn.execute("SELECT partition, next_offset FROM consumer_offsets WHERE group_id = %s AND topic = %s "
                            "AND next_offset > 0", (group, settings.intake_topic)).fetchall()
    return {int(p): int(o) for p, o in rows}


def test_kafka_offsets_follow_the_stored_ones_without_a_commit_per_batch(settings: Settings) -> None:
    proj = Projector(settings)
    proj.kafka_commit_every = 0.3
    commits: list[int] = []
    original = proj._commit_kafka

    def counted(consumer: Consumer, force: bool = False) -> None:
        before = proj._kafka_committed_at
        original(consumer, force)
        if proj._kafka_committed_at != before:
            commits.append(len(commits))

    proj._commit_kafka = counted  # type: ignore[method-assign]
    proj.start()
    try:
        assert proj.ready.wait(30), "the projector was not assigned its partitions"
        with AgentClient("hint-agent", settings) as client:
            handles = []
            t0 = time.monotonic()
            for i in range(120):  # ~1.2 s of sparse emits: one small batch each, or nearly
                handles.append(client.emit(InventoryAdjusted(sku=f"h{i % 7}", delta=1), stream_for(f"h{i % 7}")))
                time.sleep(max(0.0, t0 + (i + 1) * 0.010 - time.monotonic()))
            assert all(h.result(30).status is Outcome.COMMITTED for h in handles)
        batches = proj.stats.batches
        wait_until(lambda: _kafka_offsets(settings, proj.group) == _stored(settings, proj.group), timeout=15,
                   what="the Kafka offsets to reach the stored offsets while the projector runs")
    finally:
        proj.stop()
    # Batches came every few ms; commits at most every 0.3 s (plus the stop's).
    assert batches >= 10
    assert len(commits) <= (time.monotonic() - t0) / 0.3 + 2 < batches


def test_the_last_offsets_are_committed_at_stop(settings: Settings) -> None:
    proj = Projector(settings)
    proj.kafka_commit_every = 3600.0  # only the first batch's commit and the stop's
    proj.start()
    try:
        assert proj.ready.wait(30), "the projector was not assigned its partitions"
        with AgentClient("hint-agent", settings) as client:
            for i in range(5):
                assert client.emit_and_wait(InventoryAdjusted(sku=f"s{i}", delta=1),
                                            stream_for(f"s{i}")).status is Outcome.COMMITTED
    finally:
        proj.stop()
    stored = _stored(settings, proj.group)
    assert sum(stored.values()) == 5
    wait_until(lambda: _kafka_offsets(settings, proj.group) == stored, timeout=15,
               what="the Kafka offsets to reach the stored offsets after stop")
