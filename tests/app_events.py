"""A stand-in for an application's own module: one event type and one read model, unknown to
eventstore until a projector imports it through EVENTSTORE_APP_MODULES."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from eventstore.core.events import Event
from eventstore.core.records import RecordedEvent
from eventstore.postgres.readmodels import ReadModel, read_models


class DocumentTitled(Event):
    doc: str
    title: str


class DocumentTitles(ReadModel):
    name = "document_titles"
    table = "document_titles"

    def setup(self, cur: psycopg.Cursor[Any]) -> None:
        cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (doc text PRIMARY KEY, title text NOT NULL)")
                    .format(sql.Identifier(self.table)))

    @ReadModel.on(DocumentTitled)
    def titled(self, cur: psycopg.Cursor[Any], ev: RecordedEvent, typed: Any) -> None:
        cur.execute(sql.SQL("INSERT INTO {} (doc, title) VALUES (%s, %s) ON CONFLICT (doc) DO UPDATE "
                            "SET title = EXCLUDED.title").format(sql.Identifier(self.table)),
                    (typed.doc, typed.title))


read_models.register(DocumentTitles, name="document_titles")
