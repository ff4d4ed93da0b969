"""The coordinator's pure rules, without servers: FCFS and compatibility, lock order, wait-for cycles,
victim choice, wait-exceeded and backoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from eventstore.core import lockrules as rules
from eventstore.core.lockrules import Holder, Mode, Waiter

X, S = Mode.EXCLUSIVE, Mode.SHARED
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def w(agent: str, mode: Mode, seq: int, resource: str = "r", at: int | None = None) -> Waiter:
    return Waiter(resource, agent, mode, seq, T0 + timedelta(seconds=seq if at is None else at))


def h(agent: str, mode: Mode, resource: str = "r") -> Holder:
    return Holder(resource, agent, mode)


def test_compatibility_only_shared_with_shared() -> None:
    assert rules.compatible(S, S)
    assert not rules.compatible(S, X)
    assert not rules.compatible(X, S)
    assert not rules.compatible(X, X)


def test_free_resource_is_granted_in_any_mode() -> None:
    assert rules.may_grant("a", X, [], [])
    assert rules.may_grant("a", S, [], [])


def test_exclusive_holder_blocks_everyone_else() -> None:
    assert not rules.may_grant("b", X, [h("a", X)], [])
    assert not rules.may_grant("b", S, [h("a", X)], [])


def test_readers_share_but_a_writer_waits() -> None:
    assert rules.may_grant("b", S, [h("a", S)], [])
    assert not rules.may_grant("b", X, [h("a", S)], [])


def test_fcfs_a_newcomer_never_overtakes_the_queue() -> None:
    queue = [w("q", X, 1)]
    assert not rules.may_grant("new", X, [], queue)
    assert rules.may_grant("q", X, [], queue)


def test_queued_writer_blocks_later_readers_so_writers_do_not_starve() -> None:
    holders = [h("reader1", S)]
    queue = [w("writer", X, 1)]
    assert not rules.may_grant("reader2", S, holders, queue)
    assert not rules.may_grant("writer", X, holders, queue)  # still waits for reader1
    assert rules.may_grant("writer", X, [], queue)


def test_readers_queued_ahead_do_not_block_a_reader() -> None:
    queue = [w("r1", S, 1), w("r2", S, 2)]
    assert rules.may_grant("r2", S, [], queue)
    assert not rules.may_grant("w", X, [], queue)


def test_waiter_behind_an_incompatible_waiter_is_not_granted() -> None:
    queue = [w("writer", X, 1), w("reader", S, 2)]
    assert not rules.may_grant("reader", S, [h("r0", S)], queue)


def test_lock_order_default_is_sorted_ids() -> None:
    assert rules.order_violation("b", ["a"]) is None
    assert rules.order_violation("a", ["b"]) == "b"
    assert rules.order_violation("b", ["a", "c", "b"]) == "c"
    assert rules.order_violation("a", ["a"]) is None  # re-entry
    assert rules.order_violation("a", []) is None


def test_lock_order_with_a_rank() -> None:
    rank = {"orders": 0, "inventory": 1, "payments": 2}.__getitem__
    assert rules.order_violation("inventory", ["orders"], rank) is None
    assert rules.order_violation("orders", ["payments", "inventory"], rank) == "payments"
    assert rules.sort_resources(["payments", "orders", "inventory", "orders"], rank) == [
        "orders", "inventory", "payments"]


def test_equal_ranks_fall_back_to_the_id() -> None:
    def rank(_: str) -> int:
        return 0

    assert rules.sort_resources(["b", "a"], rank) == ["a", "b"]
    assert rules.order_violation("a", ["b"], rank) == "b"


def test_wait_for_edges_to_holders_and_queued_ahead() -> None:
    holders = [h("a", S, "x")]
    waiters = [w("b", X, 1, "x"), w("c", S, 2, "x")]
    edges = rules.wait_for_edges(holders, waiters)
    assert edges["b"] == {"a"}
    assert edges["c"] == {"b"}  # compatible with holder a, but queued behind writer b


def test_two_agent_cycle() -> None:
    holders = [h("a", X, "x"), h("b", X, "y")]
    waiters = [w("a", X, 1, "y"), w("b", X, 2, "x")]
    edges = rules.wait_for_edges(holders, waiters)
    assert rules.find_cycle(edges, "a") == ["a", "b"]
    assert rules.find_cycle(edges, "b") == ["b", "a"]


def test_three_agent_cycle_and_no_false_positive() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert rules.find_cycle(edges, "a") == ["a", "b", "c"]
    assert rules.find_cycle(edges, "d") is None  # d waits on the cycle but is not on it
    assert rules.find_cycle({"a": {"b"}, "b": {"c"}}, "a") is None
    assert rules.all_cycles(edges) == [["a", "b", "c"]]


def test_cycle_through_a_side_branch() -> None:
    edges = {"a": {"z", "b"}, "z": set(), "b": {"a"}}
    assert rules.find_cycle(edges, "a") == ["a", "b"]


def test_victim_is_the_youngest_waiter_ties_by_agent_id() -> None:
    since = {"a": T0, "b": T0 + timedelta(seconds=2), "c": T0 + timedelta(seconds=1)}
    assert rules.choose_victim(["a", "b", "c"], since) == "b"
    tie = {"a": T0, "b": T0}
    assert rules.choose_victim(["a", "b"], tie) == "b"
    assert rules.choose_victim(["b", "a"], tie) == "b"  # independent of where the cycle starts


def test_victim_needs_a_waiter() -> None:
    with pytest.raises(ValueError):
        rules.choose_victim(["a"], {})


def test_wait_exceeded_is_twice_the_expected_duration_once() -> None:
    assert not rules.wait_exceeded(9.9, 5.0, False)
    assert rules.wait_exceeded(10.1, 5.0, False)
    assert not rules.wait_exceeded(10.1, 5.0, True)
    assert not rules.wait_exceeded(100.0, None, False)


def test_backoff_grows_to_the_cap_with_jitter() -> None:
    def one() -> float:
        return 1.0

    def zero() -> float:
        return 0.0

    assert rules.backoff(0, rand=one) == pytest.approx(0.005)
    assert rules.backoff(1, rand=one) == pytest.approx(0.01)
    assert rules.backoff(50, rand=one) == pytest.approx(0.1)
    assert rules.backoff(50, rand=zero) == pytest.approx(0.05)


def test_advisory_keys_are_stable_signed_32_bit() -> None:
    k = rules.key_of("inventory:A1")
    assert k == rules.key_of("inventory:A1")
    assert -(2**31) <= k < 2**31
    assert rules.key_of("a") != rules.key_of("b")
