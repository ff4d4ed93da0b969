"""The commit wake-up's decisions (pure, no servers): a notice is only a claim, garbage claims nothing, a
burst costs one read, a forged far-ahead claim cannot hide the genuine ones beside it, and claims the log
did not bear out pause further reads without losing the claims that arrive meanwhile (core/commitwake.py)."""

from __future__ import annotations

import pytest

from eventstore.core.commitwake import MAX_DIGITS, WakeGate, claims


@pytest.mark.parametrize("payloads, claimed", [
    (["17"], [17]),
    (["3", "9", "5"], [3, 9, 5]),
    ([" 42\n"], [42]),
    ([], []),
    ([""], []),
    (["garbage", "1e9", "0x10", "-5", "+7", "1_000", "3.0", "٣", "²", "12 13"], []),  # not positions
    (["9" * (MAX_DIGITS + 1), "4"], [4]),  # longer than a bigint: garbage, the well-formed claim counts
    (["9" * 7000], []),  # near NOTIFY's limit: no big-int parse
    (["garbage", "8", "\x00"], [8]),
])
def test_claims_are_the_well_formed_positions(payloads: list[str], claimed: list[int]) -> None:
    assert claims(payloads) == claimed


def test_a_burst_is_one_read_up_to_its_newest_claim_within_the_window() -> None:
    gate = WakeGate(window=100, pause=0.1)
    assert gate.target([10], last=10, now=0.0) is None  # already applied (Kafka was first)
    assert gate.target([3], last=10, now=0.0) is None
    assert gate.target([11, 14, 12], last=10, now=0.0) == 14
    assert gate.target([110], last=10, now=0.0) == 110
    assert gate.target([111], last=10, now=0.0) is None  # that far behind is a catch-up: Kafka's job
    assert gate.skipped == 1


def test_a_forged_far_ahead_claim_does_not_hide_the_genuine_ones_beside_it() -> None:
    gate = WakeGate(window=100, pause=0.1)
    assert gate.target([12, 9_999_999_999_999, 13], last=11, now=0.0) == 13
    assert gate.skipped == 1


def test_a_claim_the_log_did_not_bear_out_pauses_reads_but_keeps_the_claims_that_arrive() -> None:
    gate = WakeGate(window=10**6, pause=0.1)
    gate.read_done(50, reached=50, now=1.0)  # borne out: no pause
    assert gate.disproved == 0 and gate.target([51], last=50, now=1.0) == 51
    gate.read_done(10**5, reached=50, now=1.0)  # forged (the log ended at 50)
    assert gate.disproved == 1
    assert gate.target([51], last=50, now=1.05) is None  # a storm of forgeries: at most one read per pause
    assert gate.target([53, 52], last=50, now=1.08) is None
    assert gate.target([], last=50, now=1.11) == 53  # the genuine claims made during the pause are read after it
    assert gate.target([], last=53, now=1.12) is None  # and only once


def test_a_kept_claim_that_kafka_delivered_meanwhile_costs_no_read() -> None:
    gate = WakeGate(window=100, pause=0.1)
    gate.read_done(90, reached=20, now=0.0)
    assert gate.target([25], last=20, now=0.05) is None
    assert gate.target([], last=30, now=0.2) is None  # Kafka applied up to 30 during the pause
