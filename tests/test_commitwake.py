"""The commit wake-up's decisions (pure, no servers): a notice is only a claim, garbage claims nothing, a
burst costs one read, and claims the log did not bear out pause further reads (core/commitwake.py)."""

from __future__ import annotations

import pytest

from eventstore.core.commitwake import MAX_DIGITS, WakeGate, newest_claim


@pytest.mark.parametrize("payloads, claim", [
    (["17"], 17),
    (["3", "9", "5"], 9),  # a burst: one claim, the newest
    ([" 42\n"], 42),
    ([], None),
    ([""], None),
    (["garbage", "1e9", "0x10", "-5", "+7", "1_000", "3.0", "٣", "²", "12 13"], None),  # not positions
    (["9" * (MAX_DIGITS + 1), "4"], 4),  # longer than a bigint: garbage, the well-formed claim counts
    (["9" * 7000], None),  # near NOTIFY's limit: no big-int parse
    (["garbage", "8", "\x00"], 8),
])
def test_newest_claim_takes_the_highest_well_formed_position(payloads: list[str], claim: int | None) -> None:
    assert newest_claim(payloads) == claim


def test_the_gate_reads_only_claims_beyond_the_last_applied_and_within_the_window() -> None:
    gate = WakeGate(window=100, pause=0.1)
    assert not gate.should_read(10, last=10, now=0.0)  # already applied (Kafka was first)
    assert not gate.should_read(3, last=10, now=0.0)
    assert gate.should_read(11, last=10, now=0.0)
    assert gate.should_read(110, last=10, now=0.0)
    assert not gate.should_read(111, last=10, now=0.0)  # that far behind is a catch-up: Kafka's job
    assert gate.skipped == 1


def test_a_claim_the_log_did_not_bear_out_pauses_reads_for_a_while() -> None:
    gate = WakeGate(window=10**6, pause=0.1)
    gate.read_done(50, reached=50, now=1.0)  # borne out: no pause
    assert gate.disproved == 0 and gate.should_read(51, last=50, now=1.0)
    gate.read_done(10**5, reached=50, now=1.0)  # forged (the log ended at 50)
    assert gate.disproved == 1
    assert not gate.should_read(51, last=50, now=1.05)  # a storm of forgeries: at most one read per pause
    assert gate.should_read(51, last=50, now=1.11)
    assert gate.skipped == 1
