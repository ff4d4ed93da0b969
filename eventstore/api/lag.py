"""Lag of the projector (stored offsets vs the intake topic's high watermarks, per partition) and
of the publishers (checkpoint vs the log head), and readiness built on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from eventstore.core.errors import BrokerError, ConfigurationError
from eventstore.core.settings import Settings

OFFSETS = "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = %s AND topic = %s"
PUBLISHERS = """
SELECT p.name, h.position - p.position,
       coalesce(extract(epoch FROM clock_timestamp() - e.recorded_at)::float8, 0)
FROM publisher_checkpoints p CROSS JOIN log_head h LEFT JOIN events e ON e.position = p.position + 1
ORDER BY p.name
"""
REVISION = "SELECT version_num FROM alembic_version"


def intake_lag(conn: psycopg.Connection[Any], settings: Settings) -> dict[int, int] | None:
    """Messages per intake partition not yet projected, or None when the broker is unknown/unreachable."""
    from eventstore.kafka.watermarks import high_watermarks

    try:
        highs = high_watermarks(settings, settings.intake_topic)
    except (BrokerError, ConfigurationError):
        return None
    stored = {int(p): int(o) for p, o in conn.execute(OFFSETS, (settings.projector_group,
                                                               settings.intake_topic)).fetchall()}
    return {p: max(0, h - stored.get(p, 0)) for p, h in highs.items()}


def publisher_lag(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return [{"name": n, "events_behind": int(b), "seconds_behind": float(s) if b > 0 else 0.0}
            for n, b, s in conn.execute(PUBLISHERS).fetchall()]


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    import migrations

    here = Path(migrations.__file__).parent
    head = ScriptDirectory(str(here), version_locations=[str(here / "versions")]).get_current_head()
    return str(head)


def readiness(conn: psycopg.Connection[Any], settings: Settings) -> tuple[bool, list[str]]:
    """Ready = migrated to head, the projector within ``ready_max_intake_lag`` messages of the intake
    topic, and every publisher within ``check_max_lag_seconds`` of the log head."""
    reasons = []
    try:
        row = conn.execute(REVISION).fetchone()
    except psycopg.errors.UndefinedTable:
        row = None
    want = head_revision()
    if row is None or str(row[0]) != want:
        reasons.append(f"schema at {None if row is None else row[0]}, not {want}: run `eventstore migrate`")
        return False, reasons
    lag = intake_lag(conn, settings)
    if lag is None:
        reasons.append("intake lag unknown: the Kafka broker is not configured or not reachable")
    elif sum(lag.values()) > settings.ready_max_intake_lag:
        reasons.append(f"projector {sum(lag.values())} messages behind the intake topic "
                       f"(limit {settings.ready_max_intake_lag})")
    for p in publisher_lag(conn):
        if p["seconds_behind"] > settings.check_max_lag_seconds:
            reasons.append(f"publisher {p['name']} {p['events_behind']} events / {p['seconds_behind']:.1f} s "
                           "behind the log head")
    return not reasons, reasons
