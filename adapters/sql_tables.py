"""Plain tables of our own beside the events, on the store's datastore (SQLite or PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class SqlTables:
    """Statements written once with `%s` and `{p}` (schema prefix), run on either backend."""

    def __init__(self, datastore: Any, *, postgres: bool, schema: str = "") -> None:
        self.datastore = datastore
        self.postgres = postgres
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
