"""Signed hand-off notices (migration 0011, issue 11 aim 4): a waiter believes a release's notice without a
read of its own only when the coordinator's key signed it and it names the waiter's own queue place. These
tests forge, tamper with and replay notices, and check who can read the key."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from eventstore.coordination import Coordinator, Lease
from eventstore.coordination.acquisition import Acquisition
from eventstore.coordination.wakeup import parse


@pytest.fixture
def coord(database_url: str) -> Iterator[Coordinator]:
    with Coordinator(database_url, detect_interval=0.1) as c:
        yield c


def until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def queued(coord: Coordinator, resource: str, agent: str) -> Acquisition:
    """A request of ``agent`` in the queue of ``resource`` (one poll), its listener listening."""
    acq = coord.acquisition(resource, agent_id=agent, ttl=9, wait=30)
    assert isinstance(acq.step(), float)
    assert acq.queue_seq is not None, "the one-call queueing reports the queue place"
    until(coord.wakeups.listening.is_set, "the lease listener")
    return acq


class CountingCalls:
    """Counts the coordinator's one-statement calls (a check read would be one)."""

    def __init__(self, coord: Coordinator) -> None:
        self.calls = 0
        self._inner = coord.run_call

    def __call__(self, fn: Callable[[Any], Any], attempts: int = 5) -> Any:
        self.calls += 1
        return self._inner(fn, attempts)


def test_a_signed_notice_is_believed_without_a_read(coord: Coordinator, database_url: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    assert coord.notice_key() is not None  # read once, before the count starts
    held = coord.acquire("s", agent_id="holder", wait=0)
    acq = queued(coord, "s", "next")
    held.release()
    assert acq.wake is not None
    until(lambda: acq.wake is not None and acq.wake.grant is not None, "the hand-off notice")
    counting = CountingCalls(coord)
    monkeypatch.setattr(coord, "run_call", counting)
    lease = acq.step()
    assert isinstance(lease, Lease) and lease.token > held.token
    assert counting.calls == 0, "a signed notice for this queue place needs no read"
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT token, expires_at FROM lease_holders WHERE resource = 's' AND agent_id = 'next'"
                           ).fetchone()
    assert row is not None and row[0] == lease.token
    assert abs((row[1] - lease.expires_at).total_seconds()) < 0.001
    acq.done()
    monkeypatch.undo()
    lease.release()


def test_forged_tampered_and_replayed_notices_are_not_believed(coord: Coordinator, database_url: str) -> None:
    key = coord.notice_key()
    assert key is not None
    # A genuine notice of an earlier wait, as any role that LISTENs can record it.
    held = coord.acquire("f", agent_id="holder", wait=0)
    old = queued(coord, "f", "next")
    with psycopg.connect(database_url, autocommit=True) as spy:
        spy.execute("LISTEN eventstore_leases")
        held.release()
        genuine = next(iter(spy.notifies(timeout=10, stop_after=1))).payload
    first = old.step()
    assert isinstance(first, Lease)
    old.done()
    _, _, grant = parse(genuine)
    assert grant is not None and grant.authentic(key, old.queue_seq)
    assert not grant.authentic(key, (old.queue_seq or 0) + 1), "another queue place"
    assert not grant.authentic(b"\0" * 32, old.queue_seq), "another key"
    fields = genuine.split("\x1f")
    tampered = "\x1f".join([*fields[:2], str(int(fields[2]) + 1000), *fields[3:]])
    _, _, bad = parse(tampered)
    assert bad is not None and not bad.authentic(key, old.queue_seq), "a changed token"

    # Now "next" waits again behind a new holder; three notices arrive that must not hand it the lease.
    first.release()
    blocker = coord.acquire("f", agent_id="other", wait=0)
    acq = queued(coord, "f", "next")
    forged_body = "\x1f".join(["f", "next", "999999", fields[3], "0.1", str(acq.queue_seq)])
    for payload in (genuine, tampered, forged_body + "\x1f" + "00" * 32):
        with psycopg.connect(database_url, autocommit=True) as attacker:
            attacker.execute("SELECT pg_notify('eventstore_leases', %s)", (payload,))
        until(lambda: acq.wake is not None and acq.wake.is_set(), "the notice")
        assert not isinstance(acq.step(), Lease), f"believed {payload!r}"
    with psycopg.connect(database_url) as conn:
        holders = conn.execute("SELECT agent_id FROM lease_holders WHERE resource = 'f'").fetchall()
    assert holders == [("other",)]
    # The real release still hands it over.
    blocker.release()
    deadline = time.monotonic() + 20
    while not isinstance(got := acq.step(), Lease):
        assert time.monotonic() < deadline
        acq.sleep(got or 0.01)
    assert got.token > blocker.token
    acq.done()
    got.release()


def test_a_notice_that_is_not_ours_does_not_stop_the_listener(coord: Coordinator, database_url: str) -> None:
    held = coord.acquire("n", agent_id="holder", wait=0)
    acq = queued(coord, "n", "next")
    with psycopg.connect(database_url, autocommit=True) as attacker:
        attacker.execute("SELECT pg_notify('eventstore_leases', %s)", ("n\x1fnext\x1fx\x1fy\x1fz\x1f1\x1fab",))
    time.sleep(0.2)
    done = threading.Event()
    result: list[object] = []

    def wait() -> None:
        result.append(coord.acquire("n", agent_id="second", wait=20))
        done.set()

    t = threading.Thread(target=wait)
    t.start()
    held.release()
    deadline = time.monotonic() + 20
    while not isinstance(got := acq.step(), Lease):
        assert time.monotonic() < deadline
        acq.sleep(got or 0.01)
    acq.done()
    assert coord.wakeups.listening.is_set(), "the listener survived a malformed notice"
    got.release()
    assert done.wait(20)
    t.join()
    second = result[0]
    assert isinstance(second, Lease)
    second.release()


@pytest.mark.parametrize("role", ["eventstore_auditor", "eventstore_operator", "eventstore_agent",
                                  "eventstore_projector"])
def test_only_the_coordinator_role_reads_the_notice_key(database_url: str, role: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("SET ROLE eventstore_coordinator")
        row = conn.execute("SELECT length(key) FROM lease_notice_key").fetchone()
        assert row == (32,)
        conn.rollback()
        conn.execute(f"SET ROLE {role}")  # a fixed name from the list above, not input
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT key FROM lease_notice_key")


def test_parse_and_authentic_without_a_server() -> None:
    import hashlib
    import hmac

    key = bytes(range(32))
    body = "\x1f".join(["res", "agent", "42", "1790000000.5", "0.25", "7"])
    mac = hmac.new(key, body.encode(), hashlib.sha256).hexdigest()
    resource, head, grant = parse(body + "\x1f" + mac)
    assert (resource, head) == ("res", "agent") and grant is not None
    assert (grant.token, grant.seq, grant.waited_seconds) == (42, 7, 0.25)
    assert grant.authentic(key, 7)
    assert not grant.authentic(key, 8) and not grant.authentic(key, None) and not grant.authentic(None, 7)
    assert not parse(body + "\x1f" + mac[:-2])[2].authentic(key, 7)  # type: ignore[union-attr]
    unsigned = parse("\x1f".join(["res", "agent", "42", "1790000000.5", "0.25"]))[2]
    assert unsigned is not None and unsigned.seq is None and not unsigned.authentic(key, 7)
    assert parse("res\x1fagent\x1fnot-a-number\x1f1\x1f1\x1f7\x1fab") == ("res", "agent", None)
    assert parse("res") == ("res", "", None) and parse("res\x1fagent") == ("res", "agent", None)


@pytest.mark.parametrize("mac", ["é" * 64, "\u0000" * 64, "A" * 64, "g" * 64, "0" * 63, "0" * 65, "ü"])
def test_a_notice_with_a_mac_of_another_form_is_unsigned_and_never_raises(mac: str) -> None:
    """Any role may NOTIFY: a seven-field notice whose MAC is not 64 lowercase hex digits (a non-ASCII
    string made ``hmac.compare_digest`` raise TypeError out of the waiter's ``acquire()``) is read as
    unsigned, so the waiter checks the hand-off with its read."""
    key = bytes(range(32))
    _, _, grant = parse("\x1f".join(["res", "agent", "42", "1790000000.5", "0.25", "7", mac]))
    assert grant is not None and grant.seq is None and grant.mac == ""
    assert not grant.authentic(key, 7)
    forged = type(grant)(42, grant.expires_at, 0.25, seq=7, signed="x", mac=mac)  # built directly
    assert not forged.authentic(key, 7)
