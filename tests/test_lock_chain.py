"""The lock chain (migration 0009, issue 11 aim 4): lock events are durable, hash-chained in their own
table with their own head, verified and anchored like the other chains, and a lease step no longer
waits for the event log's head lock that the projector's batches hold."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from eventstore.cli.main import main
from eventstore.coordination import Coordinator
from eventstore.coordination.wakeup import parse
from eventstore.core import anchoring
from eventstore.core.errors import AppendOnlyViolation
from eventstore.core.exitcodes import EXIT_INTEGRITY, EXIT_OK
from eventstore.core.hashing import field_text, row_hash
from eventstore.core.history_query import HistoryQuery
from eventstore.core.lockevents import LeaseGranted, LeaseReleased, LeaseWaited
from eventstore.core.records import DirectEvent
from eventstore.postgres import eventlog, history, lockchain, sidechains
from eventstore.postgres.connection import convert
from eventstore.postgres.migrate import upgrade
from tests.fix_servers import Servers, with_dbname


def _lock_report(url: str) -> sidechains.SideReport:
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        return sidechains.verify(cur, "lock_events", sidechains.heads(cur)["lock_events"])


def _scalar(url: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def _leases(url: str, n: int) -> None:
    with Coordinator(url) as c:
        for i in range(n):
            c.acquire(f"chain-r{i % 2}", agent_id="chain-agent", ttl=5, wait=0).release()
        c.kill("chain-victim", "test")
        c.revive("chain-victim")


def test_lock_events_are_chained_and_stay_out_of_the_event_log(database_url: str) -> None:
    _leases(database_url, 4)
    report = _lock_report(database_url)
    assert report.ok and report.checked == 4 * 2 + 2 and report.head_seq == 10, report
    assert _scalar(database_url, "SELECT count(*) FROM events") == 0  # the global log was not touched
    assert _scalar(database_url, "SELECT position FROM log_head") == 0
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        rows = lockchain.read_stream(cur, "lease-chain-r0")
        victim = lockchain.read_stream(cur, "agent-chain-victim")
    assert [r["type"] for r in rows] == ["LeaseGranted", "LeaseReleased"] * 2
    assert all(r["log"] == "locks" and r["lease_resource"] == "chain-r0" for r in rows)
    assert rows[0]["payload"]["token"] == rows[0]["fencing_token"] == rows[1]["fencing_token"]
    assert [r["type"] for r in victim] == ["AgentKilled", "AgentRevived"]
    seqs = [r["n"] for r in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4


def test_a_lease_does_not_wait_for_the_event_log_head(database_url: str) -> None:
    """The coupling that issue 11 measured: a transaction holding ``log_head`` (as a projector batch does)
    no longer holds up grants, releases, renewals or the kill switch."""
    with psycopg.connect(database_url) as blocker, Coordinator(database_url) as c:
        blocker.execute("SELECT position FROM log_head FOR UPDATE")  # held until rollback below
        done = threading.Event()

        def work() -> None:
            lease = c.acquire("uncoupled", agent_id="a", ttl=5, wait=0)
            lease.renew()
            lease.release()
            c.kill("b", "test")
            done.set()

        t = threading.Thread(target=work, daemon=True)
        started = time.monotonic()
        t.start()
        finished = done.wait(30)
        elapsed = time.monotonic() - started
        blocker.rollback()
        t.join(30)
    assert finished, "a lease step waited for the log head lock"
    assert elapsed < 10, elapsed
    types = _scalar(database_url, "SELECT string_agg(type, ',' ORDER BY chain_seq) FROM lock_events")
    assert types == "LeaseGranted,LeaseRenewed,LeaseReleased,AgentKilled"


def test_lock_events_are_append_only(database_url: str) -> None:
    _leases(database_url, 1)
    for statement in ("UPDATE lock_events SET agent_id = 'someone else'", "DELETE FROM lock_events",
                      "TRUNCATE lock_events"):
        with psycopg.connect(database_url) as conn:
            with pytest.raises(psycopg.Error) as caught:
                conn.execute(statement)
            assert isinstance(convert(caught.value), AppendOnlyViolation), statement


def test_a_changed_or_deleted_lock_event_is_caught(database_url: str, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _leases(database_url, 3)
    monkeypatch.setenv("EVENTSTORE_DATABASE_URL", database_url)
    assert main(["verify"]) == EXIT_OK
    assert "lock_events intact: 8 rows" in capsys.readouterr().out
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:  # the owner lifts the trigger
        cur.execute("ALTER TABLE lock_events DISABLE TRIGGER lock_events_append_only")
        cur.execute("UPDATE lock_events SET payload = replace(payload, 'chain-agent', 'innocent') "
                    "WHERE chain_seq = 2")
        changed = sidechains.verify(cur, "lock_events", sidechains.heads(cur)["lock_events"])
        conn.rollback()
        cur.execute("ALTER TABLE lock_events DISABLE TRIGGER lock_events_append_only")
        cur.execute("DELETE FROM lock_events WHERE chain_seq = 4")
        hole = sidechains.verify(cur, "lock_events", sidechains.heads(cur)["lock_events"])
        conn.rollback()
        cur.execute("ALTER TABLE lock_events DISABLE TRIGGER lock_events_append_only")
        cur.execute("DELETE FROM lock_events WHERE chain_seq = (SELECT max(chain_seq) FROM lock_events)")
        conn.commit()
    assert changed.first_bad_seq == 2 and "changed" in (changed.problem or ""), changed
    assert hole.first_bad_seq == 4 and "missing" in (hole.problem or ""), hole
    assert main(["verify"]) == EXIT_INTEGRITY
    out = capsys.readouterr().out
    assert "lock_events TAMPERED at row 8" in out and "deleted" in out, out


def _rewrite_lock_chain(url: str, seq: int) -> None:
    """What the owner can do without the anchor key: change a lock event and recompute every later hash
    and the head, so the chain alone is consistent again."""
    columns = sidechains.CHAINS["lock_events"]
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE lock_events DISABLE TRIGGER lock_events_append_only")
        cur.execute("UPDATE lock_events SET agent_id = 'scapegoat' WHERE chain_seq = %s", (seq,))
        cur.execute("SELECT prev_hash FROM lock_events WHERE chain_seq = %s", (seq,))
        prev = bytes(cur.fetchone()[0])  # type: ignore[index]
        cur.execute(f"SELECT {', '.join(columns)} FROM lock_events WHERE chain_seq >= %s ORDER BY chain_seq",
                    (seq,))
        for values in cur.fetchall():
            h = row_hash(prev, [field_text(v) for v in values])
            conn.execute("UPDATE lock_events SET prev_hash = %s, hash = %s WHERE chain_seq = %s",
                         (prev, h, values[0]))
            prev = h
        cur.execute("UPDATE history_heads SET hash = %s WHERE name = 'lock_events'", (prev,))
        cur.execute("ALTER TABLE lock_events ENABLE TRIGGER lock_events_append_only")


def test_a_consistent_rewrite_of_the_lock_chain_is_caught_by_the_anchor(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key, anchors = tmp_path / "anchor.key", tmp_path / "anchors.jsonl"
    monkeypatch.setenv("EVENTSTORE_DATABASE_URL", database_url)
    monkeypatch.setenv("EVENTSTORE_ANCHOR_KEY", str(key))
    assert main(["anchor", "--init-key", str(key)]) == EXIT_OK
    _leases(database_url, 2)
    assert main(["anchor", "--file", str(anchors)]) == EXIT_OK
    line = json.loads(anchors.read_text())
    assert line["lock_events"]["seq"] == 6
    assert main(["verify", "--anchor", str(anchors)]) == EXIT_OK
    capsys.readouterr()
    _rewrite_lock_chain(database_url, 1)
    assert main(["verify"]) == EXIT_OK  # the chain alone cannot tell: it was recomputed
    assert main(["verify", "--anchor", str(anchors)]) == EXIT_INTEGRITY
    out = capsys.readouterr().out
    assert "lock_events row 6 is not the anchored one" in out, out


def test_an_anchor_from_before_the_lock_chain_still_verifies() -> None:
    """Anchor lines written before migration 0009 have no lock chain head; their signature still holds."""
    key = Ed25519PrivateKey.generate()
    old = anchoring.Heads(4, b"\x01" * 32, 2, b"\x02" * 32, 0, b"\x00" * 32)
    line = anchoring.sign(key, old, datetime(2026, 1, 1, tzinfo=UTC)).to_line()
    assert "lock_events" not in line
    parsed = anchoring.parse_line(line)
    assert parsed.heads == old and anchoring.signature_ok(parsed, key.public_key())
    new = anchoring.Heads(4, b"\x01" * 32, 2, b"\x02" * 32, 0, b"\x00" * 32, 7, b"\x03" * 32)
    signed = anchoring.parse_line(anchoring.sign(key, new, datetime(2026, 1, 1, tzinfo=UTC)).to_line())
    assert signed.heads == new and anchoring.signature_ok(signed, key.public_key())
    tampered = json.loads(signed.to_line())
    tampered["lock_events"]["seq"] = 6
    assert not anchoring.signature_ok(anchoring.parse_line(json.dumps(tampered)), key.public_key())
    both = anchoring.Heads(4, b"\x01" * 32, 2, b"\x02" * 32, 0, b"\x00" * 32, 7, b"\x03" * 32, 3, b"\x04" * 32)
    line = anchoring.sign(key, both, datetime(2026, 1, 1, tzinfo=UTC)).to_line()
    parsed = anchoring.parse_line(line)
    assert parsed.heads == both and anchoring.signature_ok(parsed, key.public_key())
    tampered = json.loads(line)
    tampered["identity_refusals"]["hash"] = "05" * 32  # the identity-refusal head is signed too (0012)
    assert not anchoring.signature_ok(anchoring.parse_line(json.dumps(tampered)), key.public_key())


def _alembic(url: str, action: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    import migrations

    here = Path(migrations.__file__).parent
    cfg = Config(str(here / "alembic.ini"))
    cfg.set_main_option("script_location", str(here))
    cfg.set_main_option("version_locations", str(here / "versions"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    getattr(command, action)(cfg, revision)


def test_migration_0009_keeps_older_lock_history_readable_and_downgrades(servers: Servers) -> None:
    """Lock events recorded in the event log before 0009 stay there and are read, first, through the
    ``lock_history`` view; new ones go to the chain; 0009 downgrades and upgrades again."""
    name = f"es_lock_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(servers.database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = with_dbname(servers.database_url, name)
    try:
        upgrade(url, "0008")
        old = LeaseGranted(resource="m", agent_id="old", mode="exclusive", token=1, ttl_seconds=5.0)
        with psycopg.connect(url) as conn, conn.cursor() as cur:
            eventlog.append_direct(cur, [DirectEvent("lease-m", old, "old", lease_resource="m", fencing_token=1)])
        upgrade(url)
        with Coordinator(url) as c:
            c.acquire("m", agent_id="new", ttl=5, wait=0).release()
        with psycopg.connect(url) as conn, conn.cursor() as cur:
            rows = lockchain.read_stream(cur, "lease-m")
        assert [(r["log"], r["type"], r["agent_id"]) for r in rows] == [
            ("events", "LeaseGranted", "old"), ("locks", "LeaseGranted", "new"), ("locks", "LeaseReleased", "new")]
        assert _lock_report(url).checked == 2
        with psycopg.connect(url, autocommit=True) as conn:  # `eventstore history --stream lease-m`, paged
            first = history.query(conn, HistoryQuery.create(stream="lease-m", limit=2))
            assert first.more and first.next_cursor is not None
            rest = history.query(conn, HistoryQuery.create(stream="lease-m", limit=2, after=first.next_cursor))
            released = history.query(conn, HistoryQuery.create(stream="lease-m", type="LeaseReleased"))
            grants = history.query(conn, HistoryQuery.create(type="LeaseGranted", agent="new"))
        assert [(r.event["position"], r.event["lock_seq"], r.event["agent_id"]) for r in first.rows] == [
            (1, None, "old"), (None, 1, "new")]
        assert [(r.event["lock_seq"], r.event["type"]) for r in rest.rows] == [(2, "LeaseReleased")] and not rest.more
        assert [r.event["payload"]["agent_id"] for r in released.rows] == ["new"]
        assert [(r.event["stream"], r.event["lock_seq"]) for r in grants.rows] == [("lease-m", 1)]
        _alembic(url, "downgrade", "0008")
        assert _scalar(url, "SELECT to_regclass('lock_events') IS NULL AND to_regclass('lock_history') IS NULL")
        assert _scalar(url, "SELECT count(*) FROM history_heads WHERE name = 'lock_events'") == 0
        upgrade(url)
        assert _lock_report(url).ok
    finally:
        with psycopg.connect(servers.database_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_lock_events_written_by_the_database_match_their_event_classes(database_url: str) -> None:
    """The one-call grant and the one-statement release write their payloads in SQL: each must carry
    exactly the fields of its event class and validate as it, like the payloads written from Python."""
    with Coordinator(database_url) as c:
        lease = c.acquire("sql-written", agent_id="w", ttl=7.5, wait=0)  # free: the one-call grant
        waiting = threading.Thread(target=lambda: c.acquire("sql-written", agent_id="q", ttl=3, wait=30).release())
        waiting.start()
        deadline = time.monotonic() + 30
        while _scalar(database_url, "SELECT count(*) FROM lease_waiters") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        lease.release()  # the one-statement release; the head of the queue is woken and granted in one call
        waiting.join(30)
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        rows = lockchain.read_stream(cur, "lease-sql-written")
    assert [(r["type"], r["agent_id"]) for r in rows] == [
        ("LeaseGranted", "w"), ("LeaseReleased", "w"), ("LeaseWaited", "q"), ("LeaseGranted", "q"),
        ("LeaseReleased", "q")]
    classes: dict[str, type[LeaseGranted | LeaseReleased | LeaseWaited]] = {
        "LeaseGranted": LeaseGranted, "LeaseReleased": LeaseReleased, "LeaseWaited": LeaseWaited}
    for r in rows:
        cls = classes[r["type"]]
        assert set(r["payload"]) == set(cls.model_fields), r
        event = cls.model_validate(r["payload"])
        assert event.agent_id == r["agent_id"] and event.resource == "sql-written"
    granted = LeaseGranted.model_validate(rows[0]["payload"])
    assert (granted.ttl_seconds, granted.waited_seconds, granted.mode) == (7.5, 0.0, "exclusive")
    assert granted.token == rows[0]["fencing_token"] == rows[1]["fencing_token"]
    waited = LeaseWaited.model_validate(rows[2]["payload"])
    second = LeaseGranted.model_validate(rows[3]["payload"])
    assert second.waited_seconds > 0 and waited.ended in ("handed_off", "granted")
    assert waited.waited_seconds is not None and abs(waited.waited_seconds - second.waited_seconds) < 0.05
    assert rows[2]["fencing_token"] is None and rows[2]["n"] + 1 == rows[3]["n"]
    assert rows[3]["fencing_token"] > granted.token
    assert _lock_report(database_url).ok


def test_a_wake_up_names_an_exclusive_head_and_wakes_only_it() -> None:
    from eventstore.coordination.wakeup import Wakeups

    w = Wakeups(None)  # type: ignore[arg-type]  # no listener thread: stopped before the first register
    w._stop.set()
    head, behind, anyone, other = (w.register("r", "a"), w.register("r", "b"), w.register("r"),
                                   w.register("s", "a"))
    w._wake("r\x1fa")
    assert (head.is_set(), behind.is_set(), anyone.is_set(), other.is_set()) == (True, False, True, False)
    for e in (head, anyone):
        e.clear()
    w._wake("r")  # a shared head: every waiter of the resource polls
    assert (head.is_set(), behind.is_set(), anyone.is_set(), other.is_set()) == (True, True, True, False)


def _released_notice(url: str, mode: str) -> str:
    """Hold 'n' exclusively, queue agent q for it in ``mode``, release: the payload the release sent."""
    with Coordinator(url) as c, psycopg.connect(url, autocommit=True) as listener:
        listener.execute("LISTEN eventstore_leases")
        lease = c.acquire("n", agent_id="holder", ttl=5, wait=0)
        waiter = threading.Thread(target=lambda: c.acquire("n", agent_id="q", mode=mode, wait=30).release())
        waiter.start()
        deadline = time.monotonic() + 30
        while _scalar(url, "SELECT count(*) FROM lease_waiters") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        lease.release()
        notes = list(listener.notifies(timeout=10, stop_after=1))
        waiter.join(30)
    return notes[0].payload


def test_a_release_names_the_exclusive_head_of_the_queue(database_url: str) -> None:
    """An exclusive head is handed the lease by the release (migration 0010): the notice names it and
    carries its grant; a shared head is only woken, with every other waiter of the resource."""
    resource, head, grant = parse(_released_notice(database_url, "exclusive"))
    assert (resource, head) == ("n", "q") and grant is not None
    assert grant.token == _scalar(database_url, "SELECT fencing_token FROM lock_events WHERE type = 'LeaseGranted' "
                                                "AND agent_id = 'q' AND lease_resource = 'n'")
    assert _released_notice(database_url, "shared") == "n"
