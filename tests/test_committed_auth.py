"""An authentic committed stream (issue 9): a subscriber applies a committed-topic message only if it
chains onto the last event it applied and the log holds it; anything else is replaced by the log's own
events, and a position beyond the log's head is never applied or checkpointed."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer

from consumers import LocalView, SQLiteView, Subscriber
from eventstore.core.errors import ComponentFailedError, IntegrityError
from eventstore.core.hashing import recorded_hash
from eventstore.core.records import DirectEvent, RecordedEvent
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryUpdated, quantity_reducer, stream_for
from eventstore.kafka.config import producer_config
from eventstore.postgres import eventlog
from eventstore.projection.publisher import Publisher
from eventstore.wire.committed import encode_committed
from tests.fix_projector import settings_env, wait_until

SKU = "F"
STREAM = stream_for(SKU)


def commit(settings: Settings, *quantities: int, sku: str = SKU) -> list[RecordedEvent]:
    """Append events straight into the log (no projector needed); the publisher takes them from there."""
    with psycopg.connect(settings.require_database()) as conn, conn.cursor() as cur:
        return eventlog.append_direct(cur, [DirectEvent(stream_for(sku), InventoryUpdated(sku=sku, quantity=q), "a")
                                            for q in quantities])


def produce(settings: Settings, *events: RecordedEvent, raw: bytes | None = None) -> None:
    """What anyone allowed to write to the committed topic can do."""
    producer = Producer(producer_config(settings))
    for ev in events:
        key, value, headers = encode_committed(ev)
        producer.produce(settings.committed_topic, value=value, key=key, headers=headers)
    if raw is not None:
        producer.produce(settings.committed_topic, value=raw, key=STREAM.encode())
    assert producer.flush(30) == 0


def forge(after: RecordedEvent, position: int, quantity: int) -> RecordedEvent:
    """The best forgery without the database: it names the real previous hash and hashes itself."""
    eid = uuid.uuid4()
    ev = RecordedEvent(position=position, event_id=eid, stream=STREAM, version=after.version + 1,
                       type=InventoryUpdated.event_type, schema_version=1, payload={"sku": SKU, "quantity": quantity},
                       agent_id="mallory", idempotency_key=f"forged-{eid}", correlation_id=eid, causation_id=None,
                       occurred_at=None, recorded_at=after.recorded_at, prev_hash=after.hash)
    assert after.hash is not None
    return replace(ev, hash=recorded_hash(ev, after.hash))


def test_a_forged_message_at_the_next_position_changes_nothing_and_the_real_event_is_applied(
        settings: Settings) -> None:
    *_, third = commit(settings, 1, 2, 3)
    view = LocalView(quantity_reducer)
    with Publisher(settings), Subscriber("victim", view=view, settings=settings) as sub:
        view.wait_for_position(3, 30)
        chained = forge(third, 4, 999)  # chains onto position 3 and hashes right, but the log lacks it
        naive = replace(forge(third, 4, 998), prev_hash=None, hash=None)  # issue 9's attack as reported
        produce(settings, chained)
        wait_until(lambda: sub.forgeries >= 1, 30, "the subscriber to refuse the chained forgery")
        produce(settings, naive)
        wait_until(lambda: sub.forgeries >= 2, 30, "the subscriber to refuse the naive forgery")
        st = view.get(STREAM)
        assert view.position == 3 and st is not None and (st.state, st.version) == (3, 3)
        (real,) = commit(settings, 4)  # the real event at position 4, published after the forgeries
        view.wait_for_position(4, 30)
        st = view.get(STREAM)
        assert st is not None and (st.state, st.version, st.position) == (4, 4, 4) and real.position == 4
        # A forgery of an event the log already holds at that position: replaced by the log's own.
        produce(settings, forge(real, 5, 997))
        (fifth,) = commit(settings, 5)
        view.wait_for_position(5, 30)
        st = view.get(STREAM)
        assert st is not None and st.state == 5 and fifth.position == 5
        assert sub.error is None


def test_a_forged_huge_position_is_never_applied_or_checkpointed(settings: Settings, tmp_path: Path) -> None:
    *_, second = commit(settings, 1, 2)
    path = tmp_path / "view.db"
    view = SQLiteView(path, quantity_reducer)
    with Publisher(settings):
        with Subscriber("frozen?", view=view, settings=settings) as sub:
            view.wait_for_position(2, 30)
            produce(settings, forge(second, 10**12, 999))
            wait_until(lambda: sub.forgeries >= 1, 30, "the subscriber to refuse position 10^12")
            assert view.position == 2
            commit(settings, 3)
            view.wait_for_position(3, 30)  # not frozen: the next real event is applied
            assert sub.error is None
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT position FROM view_position").fetchone() == (3,)
        view.close()
        commit(settings, 4)
        again = SQLiteView(path, quantity_reducer)
        with Subscriber("frozen?", view=again, settings=settings) as sub:
            again.wait_for_position(4, 30)
            st = again.get(STREAM)
            assert st is not None and st.state == 4 and sub.error is None
        again.close()


def test_a_gap_larger_than_a_page_is_filled_from_the_log_page_by_page(settings: Settings) -> None:
    """Kafka lacks positions 1..25 (retention, a late publisher): filled iteratively, 4 events a page."""
    commit(settings, *range(1, 31))
    view = LocalView(quantity_reducer)
    with Publisher(settings, start_after=25), \
            Subscriber("gap", view=view, settings=settings, catch_up_from_db=False, page=4) as sub:
        view.wait_for_position(30, 30)
    assert (sub.backfilled, sub.applied, sub.forgeries) == (25, 30, 0)
    st = view.get(STREAM)
    assert st is not None and st.state == 30


def test_a_saved_view_that_the_log_does_not_hold_stops_the_subscriber(settings: Settings, tmp_path: Path) -> None:
    commit(settings, 1, 2)
    path = tmp_path / "view.db"
    view = SQLiteView(path, quantity_reducer)
    with Subscriber("saved", view=view, settings=settings):
        view.wait_for_position(2, 30)
    view.close()
    with sqlite3.connect(path) as db:
        assert len(db.execute("SELECT hash FROM view_position").fetchone()[0]) == 32
        db.execute("UPDATE view_position SET hash = zeroblob(32)")  # built from another history
    for change in (None, "UPDATE view_position SET position = 1000000000000"):  # then: saved beyond the head
        if change:
            with sqlite3.connect(path) as db:
                db.execute(change)
        again = SQLiteView(path, quantity_reducer)
        sub = Subscriber("saved", view=again, settings=settings).start()
        assert sub.finished.wait(30)
        sub.stop()
        again.close()
        assert isinstance(sub.error, IntegrityError), sub.error
        with pytest.raises(ComponentFailedError):
            sub.raise_if_failed()


def test_a_handler_that_raises_stops_the_subscriber_with_the_error_kept(settings: Settings) -> None:
    commit(settings, 1, 2)

    def broken(ev: RecordedEvent) -> None:
        raise ValueError(f"handler cannot take position {ev.position}")

    view = LocalView(quantity_reducer)
    sub = Subscriber("broken", {InventoryUpdated: broken}, view=view, settings=settings).start()
    assert sub.finished.wait(30)
    sub.stop()
    assert isinstance(sub.error, ValueError) and "position 1" in str(sub.error)
    assert view.position == 0  # nothing saved past the failing event


def test_follow_exits_non_zero_when_the_subscriber_fails(settings: Settings, tmp_path: Path) -> None:
    commit(settings, 1)
    (tmp_path / "badreducer.py").write_text("def fold(state, ev):\n    raise RuntimeError('reducer bug')\n")
    env = settings_env(settings, PYTHONPATH=f"{tmp_path}:{Path(__file__).resolve().parent.parent}")
    result = subprocess.run([sys.executable, "-m", "eventstore", "follow", "--group", "g", "--reducer",
                             "badreducer:fold"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result
    assert "reducer bug" in result.stderr


def test_a_postgres_outage_is_waited_out_not_fatal(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run of messages needs the log's word; a lost connection (simulated here: the lookup of
    the log's hash raises the driver's OperationalError twice) is retried, not a reason to stop."""
    real = eventlog.hash_at
    calls = {"n": 0, "failed": 0}

    def flaky(cur: psycopg.Cursor[Any], position: int) -> bytes | None:
        calls["n"] += 1
        if calls["n"] in (2, 3):  # call 1 is the start position's check
            calls["failed"] += 1
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return real(cur, position)

    monkeypatch.setattr(eventlog, "hash_at", flaky)
    commit(settings, 1, 2, 3)
    view = LocalView(quantity_reducer)
    with Publisher(settings), Subscriber("outage", view=view, settings=settings, catch_up_from_db=False) as sub:
        view.wait_for_position(3, 30)
    assert calls["failed"] == 2 and sub.error is None and sub.forgeries == 0
