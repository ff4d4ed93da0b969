"""Real servers for the tests, as a pytest plugin.

Order of choice: servers named by ``EVENTSTORE_TEST_DATABASE_URL`` / ``EVENTSTORE_TEST_KAFKA_BOOTSTRAP``;
else testcontainers when ``EVENTSTORE_TEST_DOCKER=1``; else the embedded servers from the wheels.
Started once per session. Every test gets its own database (cloned from a migrated template) and its
own topic namespace, so tests never see each other's state. A server that cannot start fails the
run when ``CI=true`` and skips the server tests otherwise.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from pydantic import SecretStr

from eventstore.core.settings import Settings
from eventstore.embedded import EmbeddedBroker, EmbeddedPostgres
from eventstore.postgres.migrate import upgrade


@dataclass(frozen=True)
class Servers:
    database_url: str
    kafka_bootstrap: str


def with_dbname(url: str, dbname: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def _start(stack: ExitStack, tmp: str) -> Servers:
    db = os.environ.get("EVENTSTORE_TEST_DATABASE_URL")
    kafka = os.environ.get("EVENTSTORE_TEST_KAFKA_BOOTSTRAP")
    if os.environ.get("EVENTSTORE_TEST_DOCKER") == "1" and not (db and kafka):
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer

        if not db:
            pg = stack.enter_context(PostgresContainer("postgres:17", driver=None))
            db = pg.get_connection_url()
        if not kafka:
            kc = stack.enter_context(KafkaContainer().with_kraft())
            kafka = kc.get_bootstrap_server()
    if not db:
        pg_embedded = EmbeddedPostgres(data_dir=Path(tmp) / "pg", ephemeral=True)
        db = pg_embedded.start()
        stack.callback(pg_embedded.stop)
    if not kafka:
        broker = EmbeddedBroker()
        kafka = broker.start()
        stack.callback(broker.stop)
    assert db is not None and kafka is not None
    return Servers(db, kafka)


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    # Not under pytest's basetemp: pytest prunes old basetemp folders, which would pull the data
    # directory from under a server still used by a concurrent session.
    tmp = tempfile.mkdtemp(prefix="eventstore-test-")
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, True)
        try:
            found = _start(stack, tmp)
        except Exception as e:
            if os.environ.get("CI") == "true":
                pytest.fail(f"test servers could not start: {e}", pytrace=False)
            pytest.skip(f"test servers could not start: {e}")
        yield found


@pytest.fixture(scope="session")
def template_db(servers: Servers) -> str:
    """A migrated database that each test's database is cloned from."""
    name = f"es_template_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(servers.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    upgrade(with_dbname(servers.database_url, name))
    return name


@pytest.fixture
def database_url(servers: Servers, template_db: str) -> Iterator[str]:
    name = f"es_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(servers.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield with_dbname(servers.database_url, name)
    with psycopg.connect(servers.database_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def settings(servers: Servers, database_url: str) -> Settings:
    """Settings for one test: its own database and its own topic namespace."""
    return Settings(
        database_url=SecretStr(database_url),
        kafka_bootstrap=servers.kafka_bootstrap,
        namespace=f"t{uuid.uuid4().hex[:10]}",
        intake_partitions=4,
    )
