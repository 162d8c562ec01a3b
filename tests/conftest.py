"""Fixtures shared by every test: real services, started once per session."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from harness.postgres import PostgresCluster

# Fixtures for nginx, sshd + rrsync and the local upstream index live beside
# the services they start.
pytest_plugins = ["harness.fixtures"]

_db_counter = itertools.count(1)


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def pg_template(pg: PostgresCluster) -> str:
    """A database with the schema applied, copied for each test."""
    pg.create_database("pinwheel_template")
    return "pinwheel_template"


@pytest.fixture
def database(pg: PostgresCluster, pg_template: str) -> Iterator[str]:
    """A fresh database with the current schema, dropped after the test."""
    name = f"pinwheel_t{next(_db_counter)}"
    pg.create_database(name, template=pg_template)
    try:
        yield name
    finally:
        pg.drop_database(name)
