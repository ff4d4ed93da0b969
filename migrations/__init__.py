"""Alembic migrations of the eventstore schema (run with ``eventstore migrate``)."""
