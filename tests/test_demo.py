"""The founding document's lost-update scenario, as ``eventstore demo`` runs it."""

from __future__ import annotations

from eventstore import demo
from eventstore.settings import Settings


def test_demo_shows_the_lost_update_and_the_backbone_prevents_it(settings: Settings) -> None:
    lines: list[str] = []
    naive, backbone = demo.run(settings, lines.append)
    assert naive != demo.START - demo.SALE + demo.ADJUSTMENT  # the naive way loses an update
    assert backbone == 1
    text = "\n".join(lines)
    assert "CONFLICT" in text and "wrong by" in text
    assert text.count("COMMITTED") == 3  # the restock, the winner and the loser's retry
