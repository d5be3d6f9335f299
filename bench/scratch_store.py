"""A store for one benchmark run: the SQLite file given, or a PostgreSQL database made and dropped."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

ADMIN = "host=127.0.0.1 user=postgres dbname=postgres"


@contextmanager
def scratch_store_url(store: str, sqlite_url: str) -> Iterator[str]:
    if store == "sqlite":
        yield sqlite_url
        return
    dbname = f"mm_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{dbname}"
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
