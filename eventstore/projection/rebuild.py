"""Rebuild a read model from the event log, blue/green, while the projector keeps running (promise 6).

How: a fresh table ``<table>__rebuild`` is created with the model's own ``setup`` and filled by
replaying the log from position 0 in pages (one transaction per page, so the live system is never
held up by the bulk of the work). Near the head, ONE transaction takes the ``log_head`` row lock,
replays the short remaining tail, and swaps the tables by renaming: the live table becomes
``<table>__previous`` (an older one is dropped; an operator can compare or roll back) and the
rebuilt table takes the live name.

Why the swap is exact: every appender (projector batch, coordinator) locks ``log_head`` FOR UPDATE
before it appends and keeps the lock until it commits, and the projector applies the read models
inside that same transaction. So while the rebuild holds the lock: (1) no event can be appended, and
(2) every event at or below the head it read is committed *and* already applied to the live table,
in position order. The live table is therefore exactly fold(events 1..head), and so is the rebuilt
table after the tail replay. The next appender waits for the lock; when it gets it, the swap has
committed and its statements resolve the live name to the rebuilt table. Appenders hold no lock on
the read-model table while waiting for ``log_head`` (they touch it only after the append), so the
rename's ACCESS EXCLUSIVE lock cannot deadlock with them. Prepared statements on long-lived projector
connections are safe too: PostgreSQL re-analyses a cached plan from its raw parse tree after DDL on a
relation it uses, so the name is looked up again (tests/test_rebuild.py checks this).

Index and sequence names are per-schema relations, named after the table at creation
(``inventory__rebuild_pkey``); they are renamed along with their tables so the next rebuild's
``setup`` does not collide with names the live table still carries.

The swap waits at most ``lock_timeout`` for the read-model table (a long reader could otherwise keep
appenders waiting behind the held ``log_head`` lock); on timeout it rolls back, catches up and retries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from eventstore.core.errors import ConfigurationError, EventStoreError, SchemaNotReadyError, TransientStorageError
from eventstore.core.events import import_app_modules
from eventstore.core.settings import Settings
from eventstore.discovery import resolve_settings
from eventstore.postgres import eventlog
from eventstore.postgres.connection import Database, converted_errors
from eventstore.postgres.readmodels import ReadModel, apply_all, read_models

Cursor = psycopg.Cursor[Any]
Progress = Callable[[int, int], None]

REBUILD_SUFFIX = "__rebuild"
PREVIOUS_SUFFIX = "__previous"
LOCK_HEAD = "SELECT position FROM log_head FOR UPDATE"
# Indexes (incl. primary-key/unique constraint indexes) and owned sequences of a table.
DEPENDENT_RELATIONS = """
SELECT c.relname, c.relkind FROM pg_class c
WHERE c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = %(t)s::regclass
                UNION
                SELECT objid FROM pg_depend WHERE refobjid = %(t)s::regclass
                  AND classid = 'pg_class'::regclass AND deptype IN ('a', 'i'))
  AND c.relkind IN ('i', 'S')
ORDER BY c.relname
"""


@dataclass(frozen=True)
class RebuildReport:
    """What a rebuild did; ``head`` is the log position the swapped-in table reflects."""

    model: str
    table: str
    events: int  # log events replayed (every type; the model's own types were applied)
    applied: int  # of those, events of the model's types
    seconds: float
    head: int
    previous_table: str | None  # the former live table, kept for comparison/rollback

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        kept = f"previous table kept as {self.previous_table}" if self.previous_table else "no previous table"
        return (f"rebuilt {self.model} into {self.table}: {self.events:,} events replayed "
                f"({self.applied:,} applied) in {self.seconds:.2f}s = {self.events_per_second:,.0f} events/s; "
                f"swapped at log position {self.head}; {kept}")


def rebuild(
    settings: Settings | str,
    model_name: str,
    *,
    batch: int = 5000,
    progress: Progress | None = None,
    lock_timeout: float = 5.0,
    attempts: int = 5,
) -> RebuildReport:
    """Replay the log into a fresh copy of ``model_name``'s table and swap it in atomically. The read
    model is looked up among those registered by ``settings.app_modules`` (``EVENTSTORE_APP_MODULES``)."""
    settings = resolve_settings(settings)
    if batch < 1:
        raise ConfigurationError(f"rebuild batch must be at least 1, got {batch}")
    import_app_modules(settings.app_modules)
    live = read_models.create([model_name])[0]  # ConfigurationError names the registered models
    model = type(live)(table=live.table + REBUILD_SUFFIX)
    previous_name = live.table + PREVIOUS_SUFFIX
    ReadModel(table=previous_name)  # validates the derived name (length, characters) before any work
    started = time.perf_counter()
    database = Database(settings.require_database(), application_name="eventstore-rebuild")
    with converted_errors(), database.connect(autocommit=True) as conn:
        key = f"eventstore.rebuild:{live.table}"
        row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()
        if not (row and row[0]):
            raise EventStoreError(f"another rebuild of table {live.table!r} is running; wait for it to finish")
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(model.table)))
            model.setup(cur)
        done = counted = applied = 0
        had_live = False
        while True:  # bulk phase: a page per transaction, no lock on the live system
            with conn.transaction(), conn.cursor() as cur:
                head = eventlog.head_position(cur)
                if head - done <= batch:
                    break
                done, n, a = _replay(cur, model, done, done + batch, batch)  # one page (positions are gapless)
                counted, applied = counted + n, applied + a
            if progress:
                progress(done, head)
        for attempt in range(1, attempts + 1):
            try:
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout * 1000)}ms",))
                    cur.execute(LOCK_HEAD)  # appenders wait from here until the swap commits
                    row = cur.fetchone()
                    if row is None:
                        raise SchemaNotReadyError("the log_head row is missing; run `eventstore migrate`")
                    head = int(row[0])
                    tail_done, n, a = _replay(cur, model, done, head, batch)
                    had_live = _swap(cur, live.table, model.table, previous_name)
                done, counted, applied = tail_done, counted + n, applied + a
                break
            except psycopg.errors.LockNotAvailable as e:
                if attempt == attempts:
                    raise TransientStorageError(
                        f"rebuild of {model_name!r} could not lock table {live.table!r} for the swap within "
                        f"{lock_timeout}s, {attempts} times (a long transaction is reading it?): {e}") from e
                with conn.transaction(), conn.cursor() as cur:  # catch up, then try again
                    done, n, a = _replay(cur, model, done, eventlog.head_position(cur), batch)
                    counted, applied = counted + n, applied + a
        if progress:
            progress(done, head)
    return RebuildReport(model_name, live.table, counted, applied, time.perf_counter() - started, head,
                         previous_name if had_live else None)


def _replay(cur: Cursor, model: ReadModel, after: int, head: int, batch: int) -> tuple[int, int, int]:
    """Apply events in (after, head] to ``model``'s table; returns (position reached, read, applied)."""
    read = applied = 0
    while after < head:
        events = [e for e in eventlog.read_all(cur, after, min(batch, head - after)) if e.position <= head]
        if not events:
            break
        apply_all(cur, [model], events)
        read += len(events)
        applied += sum(1 for e in events if e.type in model.event_types)
        after = events[-1].position
    return after, read, applied


def _swap(cur: Cursor, live: str, fresh: str, previous: str) -> bool:
    """Rename live -> previous (dropping an older previous) and fresh -> live; True if live existed."""
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (sql.Identifier(live).as_string(cur),))
    row = cur.fetchone()
    had_live = bool(row and row[0])
    if had_live:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(previous)))
        _rename(cur, live, previous)
    _rename(cur, fresh, live)
    return had_live


def _rename(cur: Cursor, old: str, new: str) -> None:
    """Rename a table and the indexes/sequences whose names start with the old table name."""
    cur.execute(DEPENDENT_RELATIONS, {"t": sql.Identifier(old).as_string(cur)})
    dependents = [(str(name), str(kind)) for name, kind in cur.fetchall()]
    cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))
    for name, kind in dependents:
        if name.startswith(old):
            stmt = "ALTER INDEX {} RENAME TO {}" if kind == "i" else "ALTER SEQUENCE {} RENAME TO {}"
            cur.execute(sql.SQL(stmt).format(sql.Identifier(name), sql.Identifier(new + name[len(old):])))
