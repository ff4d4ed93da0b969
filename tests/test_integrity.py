"""History anchored outside the database (issue 9): verify to the head, signed anchors that catch a
consistent rewrite by the database owner, chained and append-only outcomes and dead letters, and
payload numbers hashed the way jsonb returns them (no false alarm on an untouched log)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from eventstore.cli.main import main
from eventstore.core.errors import AppendOnlyViolation
from eventstore.core.events import Event, registry
from eventstore.core.exitcodes import EXIT_INTEGRITY, EXIT_OK
from eventstore.core.hashing import GENESIS, canonical_json, chain_hash, intent_hash
from eventstore.core.records import DirectEvent, Envelope, NewEvent
from eventstore.core.settings import Settings
from eventstore.examples.inventory import InventoryUpdated, stream_for
from eventstore.postgres import eventlog, sidechains
from eventstore.postgres.connection import convert
from eventstore.postgres.intake import write_batch
from eventstore.postgres.intakebatch import IntakeMessage
from eventstore.postgres.migrate import upgrade
from eventstore.wire.envelope import encode
from tests.fix_servers import Servers, with_dbname


class Measured(Event):
    """A payload with the numbers and strings jsonb normalises or keeps."""

    values: dict[str, Any]


AWKWARD: dict[str, Any] = {
    "big_float": 1e16, "bigger": 1.5e300, "neg": -2.5e17, "odd": 1.2345678901234568e20, "zero": -0.0,
    "one": 1.0, "small": 1e-7, "tiny": 5e-324, "pi": 3.141592653589793, "big_int": 2**70, "neg_int": -(2**63),
    "unicode": "Grüße, 日本, 😀, \u2028", "escaped": "quote \" backslash \\ tab \t",
    "nested": {"b": [1, 2.5, {"z": 1e16, "a": None}], "a": {"deep": [True, False]}},
}


def test_canonical_json_writes_numbers_as_jsonb_returns_them() -> None:
    assert canonical_json({"x": 1e16}) == '{"x":10000000000000000}'
    assert canonical_json({"x": 1.2345678901234568e20}) == '{"x":123456789012345680000}'
    assert canonical_json({"x": -0.0, "y": [1.0, 1e-7]}) == '{"x":0.0,"y":[1.0,1e-07]}'
    assert canonical_json({"s": "e+ -0.0"}) == '{"s":"e+ -0.0"}'  # a string that trips the pre-check


def _intake(conn: psycopg.Connection[Any], events: list[tuple[str, Event]], first_offset: int = 0,
            values: list[bytes] | None = None, expected_version: int | None = None) -> None:
    msgs = []
    for i, (stream, ev) in enumerate(events):
        env = Envelope(event_id=uuid.uuid4(), idempotency_key=f"k-{uuid.uuid4()}", stream=stream,
                       agent_id="history-test", correlation_id=uuid.uuid4(), type=ev.event_type,
                       expected_version=expected_version,
                       schema_version=ev.schema_version, payload=ev.model_dump(mode="json"))
        key, value, _ = encode(env)
        msgs.append(IntakeMessage(0, first_offset + i, key, value))
    for j, raw in enumerate(values or []):
        msgs.append(IntakeMessage(0, first_offset + len(events) + j, b"junk", raw))
    write_batch(conn, group="g", topic="intake", messages=msgs, models=[], types=registry,
                authenticate=False)  # the chains are under test here, not agent identity (tests/test_security.py)


def test_float_big_int_unicode_and_nested_payloads_verify_clean(database_url: str) -> None:
    """The false alarm of issue 9: 1e16 comes back from jsonb as an integer. Through the projector's
    own batch transaction, then read back: the log verifies and the payload hashes as stored."""
    with psycopg.connect(database_url) as conn:
        _intake(conn, [("measure-1", Measured(values=AWKWARD)), ("measure-2", Measured(values={"v": 1e16}))])
        with conn.cursor() as cur:
            report = eventlog.verify_chain(cur)
            assert report.ok and report.checked == 2, report
            (stored,) = eventlog.read_all(cur, 0, 1)
            assert stored.payload["values"]["big_float"] == 10**16 and stored.payload["values"]["unicode"] == \
                AWKWARD["unicode"]
            (text,) = conn.execute("SELECT payload::text FROM events WHERE position = 1").fetchone() or ("",)
            assert canonical_json(json.loads(text)) == canonical_json(Measured(values=AWKWARD).model_dump(mode="json"))


def test_an_event_hashed_before_the_fix_still_verifies(database_url: str) -> None:
    """Logs written before 0006 hashed 1e16 as '1e+16'; verify accepts that form so they stay clean."""
    old_text = json.dumps({"values": {"v": 1e16}}, sort_keys=True, separators=(",", ":"))
    assert "1e+16" in old_text
    eid = uuid.uuid4()
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        versions = eventlog.lock_streams(cur, ["legacy-1"])
        eventlog.append(cur, [NewEvent(
            event_id=eid, stream="legacy-1", version=versions["legacy-1"] + 1, type="Measured", schema_version=1,
            payload_json=old_text, agent_id="old", idempotency_key=f"old-{eid}", correlation_id=eid,
            causation_id=None, occurred_at=None, lease_resource=None, fencing_token=None,
            intent=intent_hash("Measured", 1, "legacy-1", old_text))])
        eventlog.set_stream_versions(cur, {"legacy-1": 1})
        conn.commit()
        assert eventlog.verify_chain(cur).ok


def _fill(database_url: str, n: int, sku: str = "H") -> None:
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        eventlog.append_direct(cur, [DirectEvent(stream_for(sku), InventoryUpdated(sku=sku, quantity=q), "filler")
                                     for q in range(1, n + 1)])


def test_deleting_the_newest_event_is_caught(database_url: str, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    _fill(database_url, 3)
    monkeypatch.setenv("EVENTSTORE_DATABASE_URL", database_url)
    assert main(["verify"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "event log head: position 3, hash " in out and "event log intact: 3 events" in out
    with psycopg.connect(database_url) as conn:  # the superuser (or the owner) lifts the trigger
        conn.execute("ALTER TABLE events DISABLE TRIGGER events_append_only")
        conn.execute("DELETE FROM events WHERE position = 3")
        conn.execute("ALTER TABLE events ENABLE TRIGGER events_append_only")
    assert main(["verify"]) == EXIT_INTEGRITY
    out = capsys.readouterr().out
    assert "TAMPERED at position 3" in out and "newest events were deleted" in out, out
    with psycopg.connect(database_url) as conn:  # hiding it by moving the head back: the hash gives it away
        conn.execute("UPDATE log_head SET position = 2")
        with conn.cursor() as cur:
            report = eventlog.verify_chain(cur)
    assert not report.ok and report.first_bad_position == 2 and "head's hash" in (report.problem or "")


def _rewrite_consistently(database_url: str, position: int, quantity: int) -> None:
    """What the table owner can do without the key: lift the trigger, change a quantity, recompute the
    intent and every later hash and the log head, so the chain is consistent again."""
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE events DISABLE TRIGGER events_append_only")
        cur.execute("SELECT prev_hash FROM events WHERE position = %s", (position,))
        prev = bytes((cur.fetchone() or [GENESIS])[0])
        cur.execute("UPDATE events SET payload = jsonb_set(payload, '{quantity}', to_jsonb(%s::int)) "
                    "WHERE position = %s", (quantity, position))
        for ev in eventlog.read_all(cur, position - 1, 1000):
            intent = intent_hash(ev.type, ev.schema_version, ev.stream, canonical_json(ev.payload))
            h = chain_hash(prev, position=ev.position, event_id=str(ev.event_id), stream=ev.stream,
                           version=ev.version, agent_id=ev.agent_id, idempotency_key=ev.idempotency_key,
                           correlation_id=str(ev.correlation_id), causation_id=None, occurred_at=ev.occurred_at,
                           recorded_at=ev.recorded_at, lease_resource=None, fencing_token=None, intent=intent)
            cur.execute("UPDATE events SET intent_hash = %s, prev_hash = %s, hash = %s WHERE position = %s",
                        (intent, prev, h, ev.position))
            prev = h
        cur.execute("UPDATE log_head SET hash = %s", (prev,))
        cur.execute("ALTER TABLE events ENABLE TRIGGER events_append_only")


def test_a_consistent_rewrite_passes_plain_verify_but_not_the_anchor(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key, anchors = tmp_path / "anchor.key", tmp_path / "anchors.jsonl"
    monkeypatch.setenv("EVENTSTORE_DATABASE_URL", database_url)
    monkeypatch.setenv("EVENTSTORE_ANCHOR_KEY", str(key))
    assert main(["anchor", "--init-key", str(key)]) == EXIT_OK
    assert key.stat().st_mode & 0o077 == 0 and main(["anchor", "--init-key", str(key)]) != EXIT_OK  # no overwrite
    _fill(database_url, 4)
    assert main(["anchor", "--file", str(anchors)]) == EXIT_OK
    _fill(database_url, 2, sku="J")  # history goes on after the anchor
    assert main(["anchor", "--file", str(anchors)]) == EXIT_OK
    line = json.loads(anchors.read_text().splitlines()[0])
    assert line["position"] == 4 and len(line["signature"]) == 128 and line["database_time"]
    assert main(["verify", "--anchor", str(anchors)]) == EXIT_OK
    capsys.readouterr()

    _rewrite_consistently(database_url, 2, 999)
    assert main(["verify"]) == EXIT_OK  # the chain alone cannot tell: it was recomputed
    assert "event log intact: 6 events" in capsys.readouterr().out
    assert main(["verify", "--anchor", str(anchors)]) == EXIT_INTEGRITY
    out = capsys.readouterr().out
    assert "anchor 1 (position 4" in out and "history was rewritten" in out, out

    # Nor can the owner write a matching anchor: a line edited to the new head fails its signature.
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        _pos, new_hash = eventlog.head(cur)
    forged = json.loads(anchors.read_text().splitlines()[1])
    forged["hash"] = new_hash.hex()
    (tmp_path / "forged.jsonl").write_text(json.dumps(forged) + "\n")
    assert main(["verify", "--anchor", str(tmp_path / "forged.jsonl")]) == EXIT_INTEGRITY
    assert "signature does not verify" in capsys.readouterr().out


def test_outcomes_and_dead_letters_are_chained_and_append_only(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        _intake(conn, [("doc-1", Measured(values={"v": i})) for i in range(3)],  # 2 conflicts
                values=[b"not json", b'{"also": "not an envelope"}'], expected_version=0)
        # The same outcome and dead letter again (a replay): skipped, the chains stay whole.
        conn.execute("INSERT INTO outcomes (event_id, agent_id, status, reason) SELECT event_id, agent_id, "
                     "status, reason FROM outcomes ON CONFLICT (event_id) DO NOTHING")
        conn.execute('INSERT INTO dead_letters (topic, partition, "offset", reason) SELECT topic, partition, '
                     '"offset", reason FROM dead_letters ON CONFLICT DO NOTHING')
        conn.commit()
        with conn.cursor() as cur:
            reports = {r.name: r for r in sidechains.verify_all(cur)}
        assert reports["dead_letters"].ok and reports["dead_letters"].checked == 2, reports
        assert reports["outcomes"].ok and reports["outcomes"].checked == 2, reports
    for statement in ("UPDATE dead_letters SET reason = 'edited'", "DELETE FROM dead_letters",
                      "TRUNCATE dead_letters"):
        with psycopg.connect(database_url) as conn:
            with pytest.raises(psycopg.Error) as caught:
                conn.execute(statement)
            assert isinstance(convert(caught.value), AppendOnlyViolation), statement
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE dead_letters DISABLE TRIGGER dead_letters_append_only")
        cur.execute("UPDATE dead_letters SET reason = 'nothing to see' WHERE chain_seq = 1")
        bad = sidechains.verify(cur, "dead_letters", sidechains.heads(cur)["dead_letters"])
        conn.rollback()
        cur.execute("ALTER TABLE outcomes DISABLE TRIGGER outcomes_append_only")
        cur.execute("DELETE FROM outcomes WHERE chain_seq = (SELECT max(chain_seq) FROM outcomes)")
        gone = sidechains.verify(cur, "outcomes", sidechains.heads(cur)["outcomes"])
        conn.rollback()
    assert bad.first_bad_seq == 1 and "changed" in (bad.problem or "")
    assert not gone.ok and "deleted" in (gone.problem or ""), gone


def test_an_anchor_also_goes_to_the_configured_topic(settings: Settings, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_subscribers import topic_messages

    key, anchors, topic = tmp_path / "k.pem", tmp_path / "a.jsonl", f"{settings.namespace}.anchors"
    monkeypatch.setenv("EVENTSTORE_DATABASE_URL", settings.require_database())
    monkeypatch.setenv("EVENTSTORE_KAFKA_BOOTSTRAP", settings.require_kafka())
    monkeypatch.setenv("EVENTSTORE_ANCHOR_TOPIC", topic)
    assert main(["anchor", "--init-key", str(key)]) == EXIT_OK
    _fill(settings.require_database(), 1)
    assert main(["anchor", "--key", str(key), "--file", str(anchors)]) == EXIT_OK
    (message,) = topic_messages(settings, topic, 1)
    assert message.decode() == anchors.read_text().strip()
    assert main(["verify", "--anchor", str(anchors), "--key", str(key) + ".pub"]) == EXIT_OK  # public half


def test_migration_0006_chains_the_rows_already_there(servers: Servers) -> None:
    """A database with outcomes and dead letters from before 0006: the migration chains them, oldest
    first, and new rows continue the chains."""
    name = f"es_mig_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(servers.database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = with_dbname(servers.database_url, name)
    try:
        upgrade(url, "0004")
        with psycopg.connect(url) as conn:
            for i in range(3):
                conn.execute("INSERT INTO outcomes (event_id, agent_id, status, reason, decided_at, reason_code) "
                             "VALUES (%s, 'old', 'conflict', 'stale', now() - make_interval(secs => %s), "
                             "'version_conflict')", (uuid.uuid4(), 10 - i))
                conn.execute('INSERT INTO dead_letters (topic, partition, "offset", key, value, reason) '
                             "VALUES ('intake', 0, %s, NULL, %s, 'not json')", (i, b"\x00\xffjunk"))
        upgrade(url)
        with psycopg.connect(url) as conn:
            conn.execute("INSERT INTO outcomes (event_id, agent_id, status, reason) VALUES (%s, 'new', 'rejected', "
                         "'r')", (uuid.uuid4(),))
            conn.commit()
            with conn.cursor() as cur:
                reports = {r.name: r for r in sidechains.verify_all(cur)}
        assert (reports["outcomes"].ok, reports["outcomes"].checked) == (True, 4), reports
        assert (reports["dead_letters"].ok, reports["dead_letters"].checked) == (True, 3), reports
    finally:
        with psycopg.connect(servers.database_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_side_chains_stay_whole_across_statements_savepoints_and_rollbacks(database_url: str) -> None:
    """The running head travels from row to row inside a transaction: a rolled-back savepoint, a
    rolled-back transaction, a skipped duplicate and several statements must leave no hole."""

    def outcome(conn: psycopg.Connection[Any], *ids: uuid.UUID) -> None:
        conn.execute("INSERT INTO outcomes (event_id, agent_id, status, reason) SELECT e, 'a', 'rejected', 'x' "
                     "FROM unnest(%s::uuid[]) e ON CONFLICT (event_id) DO NOTHING", (list(ids),))

    first = uuid.uuid4()
    with psycopg.connect(database_url) as conn:
        with conn.transaction():
            outcome(conn, first, uuid.uuid4())
            with pytest.raises(ZeroDivisionError), conn.transaction():
                outcome(conn, uuid.uuid4())
                raise ZeroDivisionError  # the savepoint is rolled back
            outcome(conn, uuid.uuid4(), first)  # one new, one skipped duplicate
        with pytest.raises(ZeroDivisionError), conn.transaction():
            outcome(conn, uuid.uuid4())
            raise ZeroDivisionError
        outcome(conn, uuid.uuid4())
        conn.commit()
        with conn.cursor() as cur:
            report = sidechains.verify(cur, "outcomes", sidechains.heads(cur)["outcomes"])
    assert (report.ok, report.checked, report.head_seq) == (True, 4, 4), report
