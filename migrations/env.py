"""Alembic environment: plain SQL migrations over SQLAlchemy's psycopg 3 dialect.

The connection is made by psycopg itself so that both URL and ``key=value`` conninfo forms work.
"""

from __future__ import annotations

import os

import psycopg
from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
dsn = config.get_main_option("sqlalchemy.url") or os.environ.get("EVENTSTORE_DATABASE_URL")
if not dsn:
    raise SystemExit("set EVENTSTORE_DATABASE_URL (or sqlalchemy.url) before running migrations")

engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn), poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
