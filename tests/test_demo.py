"""The founding document's lost-update scenario, as ``eventstore demo`` runs it."""

from __future__ import annotations

from eventstore.cli import demo
from eventstore.core.settings import Settings


def test_restock_in_flight_is_seen_as_soon_as_it_commits(settings: Settings) -> None:
    sold, lag_ms = demo.restock_in_flight(settings, lambda _line: None)
    assert sold == 1
    assert lag_ms < 2000  # seen through the subscription, not after the agent's 10 s wait ran out


def test_demo_shows_the_lost_update_and_the_backbone_prevents_it(settings: Settings) -> None:
    lines: list[str] = []
    naive, backbone = demo.run(settings, lines.append)
    assert naive != demo.START - demo.SALE + demo.ADJUSTMENT  # the naive way loses an update
    assert backbone == 1
    text = "\n".join(lines)
    assert "CONFLICT" in text and "wrong by" in text
    assert text.count("COMMITTED") == 5  # restock, winner, the loser's retry; restock of B7 and the sale
    assert "the customer got the item" in text
