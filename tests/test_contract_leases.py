"""The lease store contract (eventstore/postgres/leasestore.py), run against every implementation and
configuration on a real PostgreSQL: the coordinator's steps with pipelining on and off."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from eventstore.coordination.coordinator import Coordinator
from eventstore.core.errors import AgentKilledError, LeaseNotHeldError
from eventstore.core.lockrules import Mode
from eventstore.postgres.leasestore import LeaseStore, PostgresLeaseStore

EX, SH = Mode.EXCLUSIVE, Mode.SHARED


@pytest.fixture(params=["postgres-pipelined", "postgres-plain"])
def store(request: pytest.FixtureRequest, database_url: str) -> Iterator[LeaseStore]:
    with Coordinator(database_url, pipeline=request.param == "postgres-pipelined") as coord:
        yield PostgresLeaseStore(coord)


def granted_token(store: LeaseStore, resource: str, agent: str, mode: Mode = EX, ttl: float = 30.0) -> int:
    r = store.acquire(resource, agent, mode, ttl)
    assert r.error is None and r.grant is not None, r
    return r.grant.token


def test_grant_refuse_release_and_a_newer_token(store: LeaseStore) -> None:
    t1 = granted_token(store, "r", "a")
    assert t1 >= 1
    busy = store.acquire("r", "b", EX, 30.0)
    assert busy.grant is None and busy.error is None and busy.held_by == ["a"]
    [row] = store.holders(["r"])
    assert (row["agent_id"], row["token"], row["expired"]) == ("a", t1, False)
    held, expiry = store.release("r", "a", t1)
    assert held is not None and held >= 0 and expiry is None
    assert store.holders(["r"]) == []
    assert granted_token(store, "r", "b") > t1


def test_reentry_keeps_the_token(store: LeaseStore) -> None:
    t1 = granted_token(store, "re", "a")
    again = store.acquire("re", "a", EX, 30.0)
    assert again.grant is not None and again.grant.reentered and again.grant.token == t1


def test_release_or_renew_of_a_token_not_held_is_refused(store: LeaseStore) -> None:
    t1 = granted_token(store, "r", "a")
    with pytest.raises(LeaseNotHeldError):
        store.release("r", "a", t1 + 1)
    with pytest.raises(LeaseNotHeldError):
        store.release("r", "b", t1)
    store.release("r", "a", t1)
    with pytest.raises(LeaseNotHeldError):
        store.renew("r", "a", t1, 10.0)


def test_renew_extends_on_the_store_clock(store: LeaseStore) -> None:
    r = store.acquire("n", "a", EX, 1.0)
    assert r.grant is not None
    later = store.renew("n", "a", r.grant.token, 60.0)
    assert (later - r.grant.expires_at).total_seconds() > 50


def test_shared_holders_share_a_token_and_exclude_a_writer(store: LeaseStore) -> None:
    t1 = granted_token(store, "s", "r1", SH)
    assert granted_token(store, "s", "r2", SH) == t1
    writer = store.acquire("s", "w", EX, 30.0)
    assert writer.grant is None and writer.held_by == ["r1", "r2"]


def test_an_expired_holder_is_fenced_by_the_next_grant(store: LeaseStore) -> None:
    t1 = granted_token(store, "e", "slow", ttl=0.2)
    time.sleep(0.4)
    nxt = store.acquire("e", "next", EX, 30.0)
    assert nxt.grant is not None and nxt.grant.token > t1
    assert [(x.agent_id, x.token) for x in nxt.expired] == [("slow", t1)]
    with pytest.raises(LeaseNotHeldError):
        store.release("e", "slow", t1)


def test_queue_place_and_leaving_it(store: LeaseStore) -> None:
    granted_token(store, "q", "holder")
    first = store.acquire("q", "waiter", EX, 30.0, queue=True)
    assert first.grant is None and first.newly_queued
    again = store.acquire("q", "waiter", EX, 30.0, queue=True)
    assert again.grant is None and not again.newly_queued
    waited = store.leave_queue("q", "waiter", EX, "gave up")
    assert waited is not None and waited >= 0
    assert store.leave_queue("q", "waiter", EX, "gave up") is None


def test_kill_revokes_and_blocks_until_revived(store: LeaseStore) -> None:
    tx = granted_token(store, "kx", "rogue")
    granted_token(store, "ky", "rogue")
    assert sorted(store.kill("rogue", "runaway")) == ["kx", "ky"]
    assert store.holders(["kx", "ky"]) == []
    refused = store.acquire("kz", "rogue", EX, 30.0)
    assert refused.grant is None and isinstance(refused.error, AgentKilledError)
    with pytest.raises(LeaseNotHeldError):
        store.release("kx", "rogue", tx)
    assert granted_token(store, "kx", "good") > tx  # the revoked token is fenced
    assert store.revive("rogue") is True
    assert store.revive("never-seen") is False
    assert granted_token(store, "kz", "rogue") >= 1
