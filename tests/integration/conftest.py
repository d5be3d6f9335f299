"""Event-store fixtures: one fresh store per test, on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"


def _postgres_answers() -> str | None:
    try:
        with psycopg.connect(PG_DSN) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        return str(e).strip().splitlines()[0]
    return None


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database; its name. Dropped afterwards."""
    problem = _postgres_answers()
    if problem is not None:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 does not answer: {problem}")
    name = f"mm_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store url for an empty store of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.sqlite'}"
    name = request.getfixturevalue("pg_database")
    return f"postgresql://postgres@127.0.0.1:5432/{name}"
