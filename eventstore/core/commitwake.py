"""When a subscriber woken by the projector's commit notice reads the event log (pure decisions, no I/O).

Every projector batch that committed events notifies ``es_committed`` with its newest position, inside
its transaction, so the notice is delivered only after the commit. A subscriber with the commit wake-up
LISTENs on that channel and, instead of waiting for the publisher and the broker, reads the log's events
after its last applied position straight from PostgreSQL.

Any role may NOTIFY any channel, so a notice is a **wake-up, never data**: what is applied comes from the
log (committed only, chained onto the last applied hash, nothing beyond the log's head). What a notice
may decide is only *whether to spend a read*: :func:`newest_claim` takes the highest well-formed position
of all notices pending at once (one read for a burst, garbage ignored) and :class:`WakeGate` skips claims
the subscriber already holds, claims too far ahead (a subscriber that far behind is catching up, which is
Kafka's job and the idle check's, not a wake-up's: at most ``window`` events are read per notice) and,
after a claim the log did not bear out (forged: notices are scoped to one database), spaces further
reads so a storm of forged notices costs a few reads per second, not one per notice. A genuine notice is
never beyond the log (it is delivered after its commit), so a subscriber that only meets genuine notices
is never paused by the gate.
"""

from __future__ import annotations

from collections.abc import Iterable

# Digits of a notice's position: positions are bigint (at most 19 digits); anything longer is garbage.
MAX_DIGITS = 19
# After a claim the log did not bear out, further reads on notices wait this long (seconds).
DISPROVED_PAUSE = 0.1


def newest_claim(payloads: Iterable[str]) -> int | None:
    """The highest position the notices claim (None if none is a well-formed position): the
    projector's payload is the decimal newest position of its batch; anything else is ignored."""
    newest: int | None = None
    for payload in payloads:
        text = payload.strip()
        if not text or len(text) > MAX_DIGITS or not text.isascii() or not text.isdigit():
            continue
        position = int(text)
        if newest is None or position > newest:
            newest = position
    return newest


class WakeGate:
    """Decides whether a claim is worth one read of the log, and learns from what the read found."""

    def __init__(self, window: int = 10_000, pause: float = DISPROVED_PAUSE) -> None:
        self.window = window
        self.pause = pause
        self.quiet_until = 0.0  # monotonic time before which claims are not read (after a disproved one)
        self.disproved = 0  # claims the log did not bear out (forged notices)
        self.skipped = 0  # claims not read: too far ahead, or within a pause

    def should_read(self, claim: int, last: int, now: float) -> bool:
        """Read when a claim is beyond what the subscriber applied and within the window, unless a
        disproved claim paused reads."""
        if claim <= last:
            return False
        if claim - last > self.window or now < self.quiet_until:
            self.skipped += 1
            return False
        return True

    def read_done(self, claim: int, reached: int, now: float) -> None:
        """After a read for ``claim`` that left the subscriber at ``reached``: a claim beyond what the log
        held pauses reads on notices for a while (a genuine notice is never ahead of its commit)."""
        if reached < claim:
            self.disproved += 1
            self.quiet_until = now + self.pause
