"""Read-model tables beside the events, in the same database.

View rows and the tracking position are written in one transaction, and the
position is compared-and-set: a batch computed from a stale position is
rolled back whole, so no event is lost or applied twice, whichever process
(serve, a CLI command, another node) got there first.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from eventsourcing.persistence import Tracking, TrackingRecorder

from mailmigrator.adapters.store.sql_tables import SqlTables, rowcount
from mailmigrator.projections.accounts import AccountDoc, RunDoc

PROJECTION_NAME = "migration_views"


class Cursor(Protocol):
    """The part of a DB-API cursor (sqlite3 or psycopg) the position update uses."""

    def execute(self, statement: str, parameters: Sequence[object], /) -> object: ...


class StalePosition(Exception):
    """Another follower moved the tracking position first; recompute the batch."""


@dataclass
class ViewBatch:
    """Changes computed from events after `start_position`, committed all or nothing."""

    start_position: int
    end_position: int
    accounts: dict[str, AccountDoc] = field(default_factory=dict)  # account id -> doc
    run: RunDoc | None = None
    log_lines: list[tuple[int, int, str, str]] = field(default_factory=list)  # position, seq, login, line


class ViewStore(SqlTables, TrackingRecorder):
    """The tables of the read models, on the application's own datastore."""

    def create_tables(self) -> None:
        bigint = self.bigint
        statements = [
            "CREATE TABLE IF NOT EXISTS {p}mm_tracking (name TEXT PRIMARY KEY, position "
            + bigint + " NOT NULL)",
            "CREATE TABLE IF NOT EXISTS {p}mm_accounts (id TEXT PRIMARY KEY, login TEXT NOT NULL UNIQUE, "
            "state TEXT NOT NULL, locked INTEGER NOT NULL, doc TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS mm_accounts_state ON {p}mm_accounts (state)",
            "CREATE TABLE IF NOT EXISTS {p}mm_run (id INTEGER PRIMARY KEY, doc TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS {p}mm_log (position " + bigint + " NOT NULL, seq INTEGER NOT NULL, "
            "login TEXT NOT NULL, line TEXT NOT NULL, PRIMARY KEY (position, seq))",
            "CREATE TABLE IF NOT EXISTS {p}mm_logfile (path TEXT PRIMARY KEY, lines " + bigint
            + " NOT NULL, size " + bigint + " NOT NULL, inode " + bigint + " NOT NULL)",
        ]
        with self._cursor(commit=True) as c:
            for statement in statements:
                c.execute(self.sql(statement))

    def drop_all(self) -> None:
        """Empty every view table and reset the position: the start of a replay."""
        with self._cursor(commit=True) as c:
            for table in ("mm_accounts", "mm_run", "mm_log", "mm_logfile"):
                c.execute(self.sql(f"DELETE FROM {{p}}{table}"))
            c.execute(self.sql("DELETE FROM {p}mm_tracking WHERE name = %s"), (PROJECTION_NAME,))

    # TrackingRecorder

    def insert_tracking(self, tracking: Tracking) -> None:
        with self._cursor(commit=True) as c:
            self._set_position(c, tracking.application_name, None, tracking.notification_id)

    def max_tracking_id(self, application_name: str) -> int | None:
        with self._cursor(commit=False) as c:
            c.execute(self.sql("SELECT position FROM {p}mm_tracking WHERE name = %s"), (application_name,))
            row = c.fetchone()
        return None if row is None else int(row["position"])

    def position(self) -> int:
        return self.max_tracking_id(PROJECTION_NAME) or 0

    def _set_position(self, c: Cursor, name: str, expected: int | None, new: int) -> None:
        if expected is None or expected == 0:
            c.execute(
                self.sql("INSERT INTO {p}mm_tracking (name, position) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING"),
                (name, new),
            )
            if rowcount(c) == 1:
                return
            if expected is None:
                c.execute(self.sql("UPDATE {p}mm_tracking SET position = %s WHERE name = %s"), (new, name))
                return
        c.execute(
            self.sql("UPDATE {p}mm_tracking SET position = %s WHERE name = %s AND position = %s"),
            (new, name, expected),
        )
        if rowcount(c) != 1:
            raise StalePosition(f"{name}: position moved away from {expected}")

    # Views

    def load_accounts(self, ids: Sequence[str]) -> dict[str, AccountDoc]:
        if not ids:
            return {}
        found: dict[str, AccountDoc] = {}
        with self._cursor(commit=False) as c:
            for start in range(0, len(ids), 500):
                chunk = list(ids[start : start + 500])
                marks = ", ".join(["%s"] * len(chunk))
                c.execute(self.sql(f"SELECT id, doc FROM {{p}}mm_accounts WHERE id IN ({marks})"), chunk)
                for row in c.fetchall():
                    found[row["id"]] = json.loads(row["doc"])
        return found

    def load_run(self) -> RunDoc | None:
        with self._cursor(commit=False) as c:
            c.execute(self.sql("SELECT doc FROM {p}mm_run WHERE id = 1"))
            row = c.fetchone()
        if row is None:
            return None
        doc: RunDoc = json.loads(row["doc"])
        return doc

    def commit(self, batch: ViewBatch) -> None:
        """Write a batch and move the position, or raise `StalePosition` and write nothing."""
        with self._cursor(commit=True) as c:
            self._set_position(c, PROJECTION_NAME, batch.start_position, batch.end_position)
            for account_id, doc in batch.accounts.items():
                c.execute(
                    self.sql(
                        "INSERT INTO {p}mm_accounts (id, login, state, locked, doc) VALUES (%s, %s, %s, %s, %s) "
                        "ON CONFLICT (id) DO UPDATE SET state = excluded.state, "
                        "locked = excluded.locked, doc = excluded.doc"
                    ),
                    (account_id, doc["login"], doc["state"], int(doc["locked"]), json.dumps(doc, sort_keys=True)),
                )
            if batch.run is not None:
                c.execute(
                    self.sql(
                        "INSERT INTO {p}mm_run (id, doc) VALUES (1, %s) "
                        "ON CONFLICT (id) DO UPDATE SET doc = excluded.doc"
                    ),
                    (json.dumps(batch.run, sort_keys=True),),
                )
            if batch.log_lines:
                c.executemany(
                    self.sql("INSERT INTO {p}mm_log (position, seq, login, line) VALUES (%s, %s, %s, %s)"),
                    batch.log_lines,
                )

    # Queries

    def accounts(self, state: str | None = None) -> list[AccountDoc]:
        query = "SELECT doc FROM {p}mm_accounts"
        params: tuple[str, ...] = ()
        if state is not None:
            query += " WHERE state = %s"
            params = (state,)
        with self._cursor(commit=False) as c:
            c.execute(self.sql(query + " ORDER BY login"), params)
            docs: list[AccountDoc] = [json.loads(row["doc"]) for row in c.fetchall()]
        return docs

    def account(self, login: str) -> AccountDoc | None:
        with self._cursor(commit=False) as c:
            c.execute(self.sql("SELECT doc FROM {p}mm_accounts WHERE login = %s"), (login,))
            row = c.fetchone()
        if row is None:
            return None
        doc: AccountDoc = json.loads(row["doc"])
        return doc

    def run(self) -> RunDoc | None:
        return self.load_run()

    def log_lines(self, after: int = 0, limit: int | None = None) -> list[str]:
        """Log lines in order, skipping the first `after`."""
        query = "SELECT line FROM {p}mm_log ORDER BY position, seq"
        query += f" LIMIT {int(limit) if limit is not None else 2**62} OFFSET {int(after)}"
        with self._cursor(commit=False) as c:
            c.execute(self.sql(query))
            return [row["line"] for row in c.fetchall()]

    def log_count(self) -> int:
        with self._cursor(commit=False) as c:
            c.execute(self.sql("SELECT COUNT(*) AS n FROM {p}mm_log"))
            return int(c.fetchone()["n"])

    def logfile_state(self, path: str) -> tuple[int, int, int] | None:
        with self._cursor(commit=False) as c:
            c.execute(self.sql("SELECT lines, size, inode FROM {p}mm_logfile WHERE path = %s"), (path,))
            row = c.fetchone()
        return None if row is None else (int(row["lines"]), int(row["size"]), int(row["inode"]))

    def set_logfile_state(self, path: str, lines: int, size: int, inode: int) -> None:
        with self._cursor(commit=True) as c:
            c.execute(
                self.sql(
                    "INSERT INTO {p}mm_logfile (path, lines, size, inode) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (path) DO UPDATE SET lines = excluded.lines, size = excluded.size, "
                    "inode = excluded.inode"
                ),
                (path, lines, size, inode),
            )

