"""When a subscriber woken by the projector's commit notice reads the event log (pure decisions, no I/O).

Every projector batch that committed events notifies ``es_committed`` with its newest position, inside
its transaction, so the notice is delivered only after the commit. A subscriber with the commit wake-up
LISTENs on that channel and, instead of waiting for the publisher and the broker, reads the log's events
after its last applied position straight from PostgreSQL.

Any role may NOTIFY any channel, so a notice is a **wake-up, never data**: what is applied comes from the
log (committed only, chained onto the last applied hash, nothing beyond the log's head). What a notice
may decide is only *whether and how far to read*: :func:`claims` takes the well-formed positions of all
notices pending at once (garbage ignored) and :class:`WakeGate` reads once up to the newest claim that is
beyond the last applied position and within ``window`` of it. Each claim is judged on its own, so a forged
far-ahead claim in a burst cannot hide the genuine ones beside it (a claim that far ahead is a catch-up,
Kafka's job and the idle check's, or a forgery). After a claim the log did not bear out (forged: notices
are scoped to one database, and a genuine one is delivered after its commit), further reads wait ``pause``
seconds, so a storm of forged notices costs a few reads per second, not one per notice; the claims that
arrive meanwhile are kept and read when the pause ends, so a forger can delay a woken subscriber by at
most the pause, never make it miss a commit (Kafka and the idle check deliver it anyway).
"""

from __future__ import annotations

from collections.abc import Iterable

# Digits of a notice's position: positions are bigint (at most 19 digits); anything longer is garbage.
MAX_DIGITS = 19
# After a claim the log did not bear out, further reads on notices wait this long (seconds).
DISPROVED_PAUSE = 0.1


def claims(payloads: Iterable[str]) -> list[int]:
    """The positions the notices claim: the projector's payload is the decimal newest position of its
    batch; anything else is ignored."""
    out: list[int] = []
    for payload in payloads:
        text = payload.strip()
        if text and len(text) <= MAX_DIGITS and text.isascii() and text.isdigit():
            out.append(int(text))
    return out


class WakeGate:
    """Decides how far a woken subscriber reads the log, and learns from what each read found."""

    def __init__(self, window: int = 10_000, pause: float = DISPROVED_PAUSE) -> None:
        self.window = window
        self.pause = pause
        self.pending: int | None = None  # the newest claim not read yet (kept through a pause)
        self.quiet_until = 0.0  # monotonic time before which claims are not read (after a disproved one)
        self.disproved = 0  # claims the log did not bear out (forged notices)
        self.skipped = 0  # claims not taken: too far ahead of the last applied position

    def target(self, claimed: Iterable[int], last: int, now: float) -> int | None:
        """The position to read the log up to now, or None: the newest claim (of these and any kept from
        before) beyond ``last`` and at most ``window`` ahead of it, unless a disproved claim paused reads
        (the claim is then kept for when the pause ends)."""
        limit = last + self.window
        for claim in claimed:
            if claim > limit:
                self.skipped += 1
            elif claim > last and (self.pending is None or claim > self.pending):
                self.pending = claim
        if self.pending is None or self.pending <= last:
            self.pending = None
            return None
        if now < self.quiet_until:
            return None
        target, self.pending = self.pending, None
        return target

    def read_done(self, target: int, reached: int, now: float) -> None:
        """After a read up to ``target`` that left the subscriber at ``reached``: a claim beyond what the log
        held pauses reads on notices for a while (a genuine notice is never ahead of its commit)."""
        if reached < target:
            self.disproved += 1
            self.quiet_until = now + self.pause
