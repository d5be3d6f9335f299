"""Plain tables of our own beside the events, on the store's datastore (SQLite or PostgreSQL)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class SqlTables:
    """Statements written once with `%s` and `{p}` (schema prefix), run on either backend."""

    def __init__(self, datastore: Any, *, postgres: bool, schema: str = "") -> None:
        self.datastore = datastore
        self.postgres = postgres
        self.schema = schema if postgres else ""
        self.prefix = f'"{schema}".' if postgres and schema else ""

    @classmethod
    def on(cls, factory: Any) -> Any:
        """Tables on the datastore of an eventsourcing infrastructure factory."""
        datastore = factory.datastore
        postgres = type(datastore).__module__.endswith("postgres")
        schema = getattr(datastore, "schema", "") if postgres else ""
        return cls(datastore, postgres=postgres, schema=schema)

    def sql(self, statement: str) -> str:
        statement = statement.replace("{p}", self.prefix)
        return statement if self.postgres else statement.replace("%s", "?")

    @property
    def bigint(self) -> str:
        return "BIGINT" if self.postgres else "INTEGER"

    @property
    def blob(self) -> str:
        return "BYTEA" if self.postgres else "BLOB"

    @contextmanager
    def _cursor(self, commit: bool) -> Iterator[Any]:
        with self.datastore.transaction(commit=commit) as cursor:
            yield cursor


def rowcount(cursor: Any) -> int:
    # The library's SQLite cursor wrapper does not expose rowcount.
    return int(getattr(cursor, "sqlite_cursor", cursor).rowcount)


def is_creation_race(error: Exception) -> bool:
    """Whether `error` is PostgreSQL losing a race of two CREATE ... IF NOT EXISTS (not atomic there)."""
    text = str(error)
    return any(sign in text for sign in ("pg_type_typname_nsp_index", "already exists", "tuple concurrently updated"))


def create_tables_racing(create: Any, attempts: int = 5) -> None:
    """Run `create()`; when another process creating the same tables wins a race, try again."""
    for attempt in range(1, attempts + 1):
        try:
            create()
            return
        except Exception as e:  # only a creation race is retried
            if attempt == attempts or not is_creation_race(e):
                raise
            time.sleep(random.uniform(0.1, 0.5))
