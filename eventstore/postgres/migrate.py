"""Run the alembic migrations shipped in the ``migrations`` package against a database."""

from __future__ import annotations

from pathlib import Path


def upgrade(database_url: str, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` (default: the newest). Accepts a URL or a libpq conninfo."""
    from alembic import command
    from alembic.config import Config

    import migrations

    here = Path(migrations.__file__).parent
    cfg = Config(str(here / "alembic.ini"))
    cfg.set_main_option("script_location", str(here))
    cfg.set_main_option("version_locations", str(here / "versions"))
    # alembic's ini interpolation treats '%' specially; URLs may carry percent-escapes.
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    command.upgrade(cfg, revision)
