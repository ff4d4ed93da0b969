"""A broker restart during a run (issue 8, item 4), on the embedded tansu broker.

tansu keeps topics in memory, so a restarted broker has empty topics: to the projector this is a
recreated intake topic, whose new offsets start below the ones stored in PostgreSQL. Carrying on
would skip the new messages as "already applied", so by design it stops with an error naming the
topic, partition and offsets (no silent skip). What this test shows is the whole operator story:
nothing emitted before the restart is lost from PostgreSQL, the event emitted after it is neither
committed nor skipped while the projector is stopped, and after ``eventstore offsets reset`` (recorded
in the log) a projector commits it and the waiting agent learns the outcome.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from eventstore.core.errors import EventStoreError, OffsetsNotTrustedError
from eventstore.core.outcomes import Outcome
from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedBroker
from eventstore.examples.inventory import InventoryAdjusted, stream_for
from eventstore.kafka.config import ensure_topics
from eventstore.projection.projector import Projector
from eventstore.sdk.client import AgentClient
from tests.fix_projector import scalar, settings_env, wait_until


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    """A broker for this test alone: it is restarted during the test."""
    broker = EmbeddedBroker()
    try:
        broker.start()
    except EventStoreError as e:
        pytest.skip(f"the embedded broker could not start: {e}")
    yield broker
    broker.stop()


def test_broker_restart_stops_the_projector_until_an_operator_resets_offsets(
        own_broker: EmbeddedBroker, settings: Settings) -> None:
    settings = settings.replace(kafka_bootstrap=own_broker.bootstrap)
    db = settings.require_database()
    sku = f"b{uuid.uuid4().hex[:6]}"
    projector = Projector(settings).start()
    try:
        assert projector.ready.wait(60)
        with AgentClient("broker-agent", settings) as client:
            for i in range(20):
                r = client.emit_and_wait(InventoryAdjusted(sku=sku, delta=1), stream_for(sku),
                                         idempotency_key=f"before-{i}", timeout=20)
                assert r.status is Outcome.COMMITTED

        own_broker.restart(down_seconds=1.0)
        # An operator (or any client) creates the topics again with the configured counts.
        ensure_topics(settings, {settings.intake_topic: settings.intake_partitions})
        with AgentClient("broker-agent", settings) as client:
            handle = client.emit(InventoryAdjusted(sku=sku, delta=100), stream_for(sku), idempotency_key="after")
            client.flush(30)
            wait_until(projector.finished.is_set, 60, "the projector to stop on the recreated topic")
            assert isinstance(projector.error, OffsetsNotTrustedError), projector.error
            assert settings.intake_topic in str(projector.error)
            # Not committed and not skipped: the event waits on the topic, undecided.
            assert scalar(db, "SELECT count(*) FROM events WHERE idempotency_key = 'after'") == 0
            assert scalar(db, "SELECT count(*) FROM outcomes WHERE idempotency_key = 'after'") == 0
            assert not handle.done()
            # Everything from before the restart is in PostgreSQL, once.
            assert scalar(db, "SELECT count(*) FROM events WHERE starts_with(idempotency_key, 'before-')") == 20

            done = subprocess.run([sys.executable, "-m", "eventstore.cli", "offsets", "reset",
                                   "--reason", "test: broker restarted with in-memory storage", "--by", "test"],
                                  env=settings_env(settings), capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr
            projector.stop()
            projector = Projector(settings).start()
            result = handle.result(60)
            assert result.status is Outcome.COMMITTED
        with psycopg.connect(db, autocommit=True) as conn:
            row = conn.execute("SELECT quantity FROM inventory WHERE sku = %s", (sku,)).fetchone()
            assert row is not None and row[0] == 120
            recorded = conn.execute("SELECT count(*) FROM events WHERE type = 'OffsetsReset' "
                                    "AND payload->>'by' = 'test'").fetchone()
            assert recorded is not None and recorded[0] == 1
    finally:
        projector.stop()
