"""Run the alembic migrations shipped in the ``migrations`` package against a database."""

from __future__ import annotations

from pathlib import Path

import psycopg

from eventstore.postgres.connection import Database, convert


def upgrade(database_url: str, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` (default: the newest). Accepts a URL or a libpq conninfo.

    The server is reached with psycopg first, so an unreachable or refusing database is reported as a
    (Transient)StorageError like everywhere else, not as a SQLAlchemy traceback."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy.exc import DBAPIError

    import migrations

    Database(database_url, application_name="eventstore-migrate").connect(autocommit=True).close()
    here = Path(migrations.__file__).parent
    cfg = Config(str(here / "alembic.ini"))
    cfg.set_main_option("script_location", str(here))
    cfg.set_main_option("version_locations", str(here / "versions"))
    # alembic's ini interpolation treats '%' specially; URLs may carry percent-escapes.
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    try:
        command.upgrade(cfg, revision)
    except DBAPIError as e:  # a driver error inside a migration: converted by SQLSTATE like the rest
        if isinstance(e.orig, psycopg.Error):
            raise convert(e.orig) from e
        raise
