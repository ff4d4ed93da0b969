"""Hostile messages against the real projector (issue 8, items 1 and 5): on a real intake topic ahead of
a normal event, through ``write_batch`` on a real database, and a permanent database error class."""

from __future__ import annotations

import json
import secrets
import uuid
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from eventstore import Projector
from eventstore.core.events import registry
from eventstore.core.settings import Settings
from eventstore.postgres.intake import read_message, write_batch
from eventstore.postgres.intakebatch import IntakeMessage, Parsed
from tests.app_events import DocumentTitled, DocumentTitles
from tests.fix_agents import signed
from tests.fix_projector import scalar, wait_until
from tests.test_hostile_parse import HOSTILE, hostile_envelopes, variant


def _signed(settings: Settings, value: bytes) -> bytes:
    """A well-formed envelope as its agent ("agent-h", registered here) would send it: signed."""
    return signed(settings.require_database(), value)


def _producer(settings: Settings) -> Producer:
    _, kafka = settings.require_servers()
    return Producer({"bootstrap.servers": kafka, "allow.auto.create.topics": False})


def test_each_hostile_message_is_dead_lettered_and_the_normal_event_after_them_commits(
    settings: Settings, projector: Projector
) -> None:
    db = settings.require_database()
    normal = _signed(settings, variant())
    p = _producer(settings)
    # Valid for the envelope and the event class, but beyond bigint for the inventory read model's column.
    cases = [*HOSTILE, ("quantity beyond bigint",
                        _signed(settings, variant(stream="inventory-BIG", payload={"sku": "BIG", "quantity": 2**70})),
                        b"inventory-BIG", "out of range")]
    for _, value, key, _ in cases:
        p.produce(settings.intake_topic, value=value, key=key, partition=0)
    p.produce(settings.intake_topic, value=normal, key=b"inventory-H1", partition=0)
    assert p.flush(30) == 0
    normal_id = json.loads(normal)["event_id"]
    wait_until(lambda: scalar(db, "SELECT count(*) FROM events WHERE event_id = %s", (normal_id,)) == 1, 60,
               "the normal event behind the hostile ones to commit")
    with psycopg.connect(db) as conn:
        rows = conn.execute('SELECT "offset", reason FROM dead_letters WHERE partition = 0 '
                            'ORDER BY "offset"').fetchall()
    assert [o for o, _ in rows] == list(range(len(cases))), "each hostile message is dead-lettered once"
    for (name, _, _, word), (_, reason) in zip(cases, rows, strict=True):
        assert reason and word in reason, f"{name}: {reason}"
    assert not projector.finished.is_set() and projector.error is None
    assert projector.stats.dead_letters == len(cases)
    assert scalar(db, "SELECT quantity FROM inventory WHERE sku = 'H1'") == 1


@pytest.fixture
def offsets_counter() -> list[int]:
    return [0]


@hsettings(max_examples=25, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.one_of(hostile_envelopes(), st.tuples(st.binary(max_size=200), st.none()),
                          st.just((variant(), b"inventory-H1"))), min_size=1, max_size=6))
def test_write_batch_ends_every_message_in_exactly_one_way(settings: Settings, offsets_counter: list[int],
                                                           batch: list[tuple[bytes, bytes | None]]) -> None:
    """Through a real transaction: every message is committed, decided (a row in outcomes, or in
    identity_refusals for an envelope not signed by the agent it names) or dead-lettered, and the stored
    offset moves past the batch."""
    db = settings.require_database()
    start = offsets_counter[0]
    msgs = [IntakeMessage(0, start + i, key, value) for i, (value, key) in enumerate(batch)]
    offsets_counter[0] += len(msgs)
    with psycopg.connect(db) as conn:
        write_batch(conn, group="g", topic="t", messages=msgs, models=[], types=registry)
        dead = {o for (o,) in conn.execute('SELECT "offset" FROM dead_letters WHERE "offset" >= %s', (start,))}
        known = {str(e) for (e,) in conn.execute(
            "SELECT event_id FROM events UNION SELECT event_id FROM outcomes "
            "UNION SELECT claimed_event_id FROM identity_refusals WHERE source_offset >= %s", (start,))}
        stored = conn.execute("SELECT next_offset FROM consumer_offsets WHERE group_id = 'g'").fetchone()
    assert stored == (start + len(msgs),)
    for m in msgs:
        got = read_message(m, registry)
        if isinstance(got, Parsed):
            assert m.offset not in dead and str(got.envelope.event_id) in known
        else:
            assert m.offset in dead


def test_an_index_row_too_large_in_a_read_model_dead_letters_only_its_event(settings: Settings) -> None:
    """54000 (program limit exceeded) is permanent: the batch is split, that one event is dead-lettered,
    its neighbours commit, and nothing is retried forever."""
    db = settings.require_database()
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE document_titles (doc text PRIMARY KEY, title text NOT NULL)")
    huge = secrets.token_urlsafe(30_000)  # incompressible: far over btree's 2704-byte row limit
    msgs = []
    for i, doc in enumerate(["d1", huge, "d3"]):
        ev = json.loads(variant())
        ev.update(stream=f"doc-{i}", type="DocumentTitled", payload={"doc": doc, "title": "t"},
                  event_id=str(uuid.uuid4()))
        msgs.append(IntakeMessage(0, i, f"doc-{i}".encode(), _signed(settings, json.dumps(ev).encode())))
    p = Projector(settings, models=[DocumentTitles()], publish=False)
    with psycopg.connect(db) as conn:
        p._batch_watermarks = {}
        result, _ = p._commit_with_retries(conn, msgs, {})
    assert [d.message.offset for d in result.dead_letters] == [1]
    assert "54000" in result.dead_letters[0].reason and "index row" in result.dead_letters[0].reason
    assert [e.stream for e in result.committed] == ["doc-0", "doc-2"]
    assert scalar(db, "SELECT count(*) FROM document_titles") == 2
    assert p.stats.retries == 0
    assert DocumentTitled.event_type == "DocumentTitled"



def test_a_retry_loop_longer_than_the_threshold_raises_one_alert(settings: Settings) -> None:
    """A batch that keeps meeting a transient error (here: its offsets row locked by another session,
    with a short lock_timeout -> 55P03) raises one alert: counter, log, and the webhook."""
    import http.server
    import threading

    received: list[dict[str, Any]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    db = settings.require_database()
    s = settings.replace(retry_alert_seconds=0.5, alert_webhook=f"http://127.0.0.1:{server.server_port}/")
    p = Projector(s, models=[], publish=False)
    msg = IntakeMessage(0, 0, b"inventory-H1", _signed(settings, variant()))
    try:
        with psycopg.connect(db, autocommit=True) as blocker, psycopg.connect(db) as conn:
            conn.execute("SET lock_timeout = '50ms'")
            conn.commit()
            blocker.execute("INSERT INTO consumer_offsets VALUES (%s, %s, 0, 0)", (p.group, p.topic))
            blocker.execute("BEGIN")
            blocker.execute("SELECT * FROM consumer_offsets FOR UPDATE")
            done = threading.Timer(1.5, lambda: blocker.execute("COMMIT"))
            done.start()
            result, _ = p._commit_with_retries(conn, [msg], {})
            done.join()
        assert len(result.committed) == 1, "the batch commits once the lock is gone"
        assert p.stats.retries >= 2 and p.stats.stalled_alerts == 1
        wait_until(lambda: len(received) == 1, 10, "the webhook to receive the alert")
        assert received[0]["type"] == "ProjectorStalled" and received[0]["payload"]["partitions"] == [0]
        assert "lock" in received[0]["payload"]["last_error"]
    finally:
        server.shutdown()
        server.server_close()
