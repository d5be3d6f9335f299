"""Read-model tables beside the events, in the same database.

View rows and the tracking position are written in one transaction, and the
position is compared-and-set: a batch computed from a stale position is
rolled back whole, so no event is lost or applied twice, whichever process
(serve, a CLI command, another node) got there first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from eventsourcing.persistence import Tracking, TrackingRecorder

from mailmigrator.adapters.store.sql_tables import SqlTables, rowcount
from mailmigrator.projections.accounts import (
    AccountDoc,
    AccountRow,
    FolderDoc,
    LeaseRow,
    RunDoc,
    StateTotals,
    script_outcome,
)

PROJECTION_NAME = "migration_views"

# An account's columns beside id, login, state, locked and doc.
ACCOUNT_COLUMNS = (
    "folder_doc", "folders", "messages", "bytes", "planned_messages", "planned_bytes", "skipped", "logins",
    "passwords_verified", "passwords_rejected", "retryable", "script", "node", "error", "started_at",
    "completed_at", "updated_at", "lease_renewed_at", "on_roster",
)
TEXT_COLUMNS = frozenset({"folder_doc", "script", "node", "error", "started_at", "completed_at", "updated_at",
                          "lease_renewed_at"})
NULLABLE_COLUMNS = frozenset({"retryable"})
ROW_COLUMNS = ("login", "state", "locked", "folders", "messages", "bytes", "planned_bytes", "started_at",
               "completed_at", "error", "updated_at", "node")
_UPDATED = ("state", "locked", "doc", *ACCOUNT_COLUMNS)
UPSERT = (
    "INSERT INTO {p}mm_accounts (id, login, " + ", ".join(_UPDATED) + ") VALUES ("
    + ", ".join(["%s"] * (len(_UPDATED) + 2)) + ") ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in _UPDATED)
)
UPDATE = "UPDATE {p}mm_accounts SET " + ", ".join(f"{name} = %s" for name in _UPDATED) + " WHERE id = %s"
# What the totals by state add up, each as its SQL expression over one state's account rows.
_SUMS = (
    ("accounts", "COUNT(*)"), ("locked", "SUM(locked)"), ("messages", "SUM(messages)"), ("bytes", "SUM(bytes)"),
    ("planned_messages", "SUM(CASE WHEN planned_messages > messages THEN planned_messages ELSE messages END)"),
    ("planned_bytes", "SUM(CASE WHEN planned_bytes > bytes THEN planned_bytes ELSE bytes END)"),
    ("skipped", "SUM(skipped)"), ("logins", "SUM(logins)"), ("passwords_verified", "SUM(passwords_verified)"),
    ("passwords_rejected", "SUM(passwords_rejected)"),
    ("retryable", "SUM(CASE WHEN retryable = 1 THEN 1 ELSE 0 END)"),
    ("scripts_failed", "SUM(CASE WHEN script = 'failed' THEN 1 ELSE 0 END)"),
    ("scripts_timed_out", "SUM(CASE WHEN script = 'timed out' THEN 1 ELSE 0 END)"),
    ("on_roster", "SUM(on_roster)"),
)
SUMMED = tuple(name for name, _ in _SUMS)
SUMS_BY_STATE = ("SELECT state, " + ", ".join(f"{expr} AS {name}" for name, expr in _SUMS)
                 + " FROM {p}mm_accounts{where} GROUP BY state")
# The totals table holds a row per state present, moved by each commit; a state's rows are found by index seeks.
ADD_TO_TOTALS = (
    "INSERT INTO {p}mm_totals (state, " + ", ".join(SUMMED) + ") VALUES (" + ", ".join(["%s"] * (len(SUMMED) + 1))
    + ") ON CONFLICT (state) DO UPDATE SET " + ", ".join(f"{n} = mm_totals.{n} + excluded.{n}" for n in SUMMED)
)
FIRST_STARTED = "SELECT MIN(started_at) AS at FROM {p}mm_accounts WHERE state = %s AND started_at IS NOT NULL"
LAST_UPDATE = "SELECT MAX(updated_at) AS at FROM {p}mm_accounts WHERE state = %s AND started_at IS NOT NULL"


class Cursor(Protocol):
    """The part of a DB-API cursor (sqlite3 or psycopg) a commit uses."""

    def execute(self, statement: str, parameters: Sequence[object], /) -> object: ...

    def executemany(self, statement: str, parameters: Iterable[Sequence[object]], /) -> object: ...

    def fetchall(self) -> list[Any]: ...


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
    """The tables of the read models, on the application's own datastore.

    An account is a row of indexed columns (what lists, counts and sums read), its document without the
    folders (`doc`, what `status --json` prints) and its folders (`folder_doc`, what `show` adds).
    """

    def create_tables(self) -> None:
        bigint = self.bigint
        columns = ", ".join(f"{name} {self._column_type(name)}" for name in ACCOUNT_COLUMNS)
        statements = [
            "CREATE TABLE IF NOT EXISTS {p}mm_tracking (name TEXT PRIMARY KEY, position "
            + bigint + " NOT NULL)",
            "CREATE TABLE IF NOT EXISTS {p}mm_accounts (id TEXT PRIMARY KEY, login TEXT NOT NULL UNIQUE, "
            f"state TEXT NOT NULL, locked INTEGER NOT NULL, doc TEXT NOT NULL, {columns})",
            "CREATE TABLE IF NOT EXISTS {p}mm_totals (state TEXT PRIMARY KEY, "
            + ", ".join(f"{name} {bigint} NOT NULL" for name in SUMMED) + ")",
            "CREATE TABLE IF NOT EXISTS {p}mm_run (id INTEGER PRIMARY KEY, doc TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS {p}mm_log (position " + bigint + " NOT NULL, seq INTEGER NOT NULL, "
            "login TEXT NOT NULL, line TEXT NOT NULL, PRIMARY KEY (position, seq))",
            "CREATE TABLE IF NOT EXISTS {p}mm_logfile (path TEXT PRIMARY KEY, lines " + bigint
            + " NOT NULL, size " + bigint + " NOT NULL, inode " + bigint + " NOT NULL)",
        ]
        with self._cursor(commit=True) as c:
            for statement in statements:
                c.execute(self.sql(statement))
        columns_added = self._add_account_columns()
        with self._cursor(commit=True) as c:
            for index in ("mm_accounts_state", "mm_accounts_totals"):
                c.execute(self.sql(f"DROP INDEX IF EXISTS {{p}}{index}"))
            c.execute(self.sql("CREATE INDEX IF NOT EXISTS mm_accounts_state_login ON {p}mm_accounts (state, login)"))
            # A state's first start and last change of a started account, each one seek.
            for column in ("started_at", "updated_at"):
                c.execute(self.sql(f"CREATE INDEX IF NOT EXISTS mm_accounts_state_{column} ON {{p}}mm_accounts "
                                   f"(state, {column}) WHERE started_at IS NOT NULL"))
            c.execute(self.sql("SELECT EXISTS (SELECT 1 FROM {p}mm_totals) AS counted, "
                               "EXISTS (SELECT 1 FROM {p}mm_accounts) AS present"))
            found = c.fetchone()
            if columns_added or (found["present"] and not found["counted"]):
                c.execute(self.sql("DELETE FROM {p}mm_totals"))
                c.execute(self.sql("INSERT INTO {p}mm_totals (state, " + ", ".join(SUMMED) + ") "
                                   + SUMS_BY_STATE.format(p="{p}", where="")))

    def drop_all(self) -> None:
        """Empty every view table and reset the position: the start of a replay."""
        with self._cursor(commit=True) as c:
            for table in ("mm_accounts", "mm_totals", "mm_run", "mm_log", "mm_logfile"):
                c.execute(self.sql(f"DELETE FROM {{p}}{table}"))
            c.execute(self.sql("DELETE FROM {p}mm_tracking WHERE name = %s"), (PROJECTION_NAME,))

    def _column_type(self, name: str) -> str:
        if name in TEXT_COLUMNS:
            return "TEXT"
        return self.bigint + (" NOT NULL DEFAULT 0" if name not in NULLABLE_COLUMNS else "")

    def _add_account_columns(self) -> bool:
        """Give a table made before the account columns existed those columns, filled from its documents.

        Whether any column was missing (the totals, counted from the columns, are then counted again)."""
        with self._cursor(commit=False) as c:
            if self.postgres:
                c.execute(
                    "SELECT column_name AS name FROM information_schema.columns WHERE table_name = 'mm_accounts' "
                    "AND table_schema = " + ("%s" if self.schema else "current_schema()"),
                    (self.schema,) if self.schema else (),
                )
            else:
                c.execute("PRAGMA table_info(mm_accounts)")
            present = {row["name"] for row in c.fetchall()}
        missing = [name for name in ACCOUNT_COLUMNS if name not in present]
        if not missing:
            return False
        with self._cursor(commit=True) as c:
            for name in missing:
                exists = " IF NOT EXISTS" if self.postgres else ""
                c.execute(self.sql(f"ALTER TABLE {{p}}mm_accounts ADD COLUMN{exists} {name} {self._column_type(name)}"))
            c.execute(self.sql("SELECT id, doc, folder_doc FROM {p}mm_accounts"))
            rows = [(row["id"], _whole_doc(row["doc"], row["folder_doc"])) for row in c.fetchall()]
            for account_id, doc in rows:
                doc.setdefault("folders", {})
                c.execute(self.sql(UPDATE), (*_account_values(account_id, doc)[2:], account_id))
        return True

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
                c.execute(self.sql(f"SELECT id, doc, folder_doc FROM {{p}}mm_accounts WHERE id IN ({marks})"), chunk)
                for row in c.fetchall():
                    found[row["id"]] = _whole_doc(row["doc"], row["folder_doc"])
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
            if batch.accounts:
                ids = list(batch.accounts)
                before = self._sums_of(c, ids)
                c.executemany(self.sql(UPSERT), [_account_values(key, doc) for key, doc in batch.accounts.items()])
                self._move_totals(c, before, self._sums_of(c, ids))
            if batch.run is not None:
                c.execute(
                    self.sql(
                        "INSERT INTO {p}mm_run (id, doc) VALUES (1, %s) "
                        "ON CONFLICT (id) DO UPDATE SET doc = excluded.doc"
                    ),
                    (json.dumps(batch.run, sort_keys=True),),
                )
            if batch.log_lines:
                self._insert_log(c, batch.log_lines)

    def _insert_log(self, c: Any, lines: Sequence[tuple[int, int, str, str]]) -> None:
        if self.postgres:
            # A replay writes millions of log rows: COPY takes them several times faster than INSERTs.
            with c.copy(self.sql("COPY {p}mm_log (position, seq, login, line) FROM STDIN")) as copy:
                for row in lines:
                    copy.write_row(row)
        else:
            c.executemany(self.sql("INSERT INTO {p}mm_log (position, seq, login, line) VALUES (%s, %s, %s, %s)"),
                          lines)

    def _sums_of(self, c: Cursor, ids: Sequence[str]) -> dict[str, list[int]]:
        """What the accounts `ids` add to the totals of each state, as stored now."""
        sums: dict[str, list[int]] = {}
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            c.execute(self.sql(SUMS_BY_STATE.format(p="{p}", where=f" WHERE id IN ({', '.join(['%s'] * len(chunk))})")),
                      chunk)
            for row in c.fetchall():
                added = [int(row[name] or 0) for name in SUMMED]
                sums[row["state"]] = [a + b for a, b in zip(sums.get(row["state"], [0] * len(SUMMED)), added)]
        return sums

    def _move_totals(self, c: Cursor, before: dict[str, list[int]], after: dict[str, list[int]]) -> None:
        """Take the accounts' old contributions off the totals and add their new ones, in the batch's transaction."""
        zero = [0] * len(SUMMED)
        moves = []
        for state in sorted(before.keys() | after.keys()):
            delta = [new - old for old, new in zip(before.get(state, zero), after.get(state, zero))]
            if any(delta):
                moves.append((state, *delta))
        if moves:
            c.executemany(self.sql(ADD_TO_TOTALS), moves)
            c.execute(self.sql("DELETE FROM {p}mm_totals WHERE accounts = 0"), ())

    # The application's stored events, read as rows: the follower decodes them itself.

    def stored_events(self, table: str, after: int, limit: int) -> list[tuple[int, str, int, str, bytes]]:
        """(position, originator id, version, topic, state) of at most `limit` events after `after`."""
        if self.postgres:
            query = (f"SELECT notification_id AS id, originator_id::text AS oid, originator_version AS v, topic, state "
                     f'FROM {{p}}"{table}" WHERE notification_id > %s ORDER BY notification_id LIMIT %s')
        else:
            query = (f"SELECT rowid AS id, originator_id AS oid, originator_version AS v, topic, state "
                     f"FROM {table} WHERE rowid > %s ORDER BY rowid LIMIT %s")
        with self._cursor(commit=False) as c:
            c.execute(self.sql(query), (after, limit))
            return [(row["id"], row["oid"], row["v"], row["topic"], bytes(row["state"])) for row in c.fetchall()]

    # Queries

    def accounts(self, state: str | None = None) -> list[AccountDoc]:
        """Whole account documents, with their folders, by login."""
        query = "SELECT doc, folder_doc FROM {p}mm_accounts"
        params: tuple[str, ...] = ()
        if state is not None:
            query += " WHERE state = %s"
            params = (state,)
        with self._cursor(commit=False) as c:
            c.execute(self.sql(query + " ORDER BY login"), params)
            return [_whole_doc(row["doc"], row["folder_doc"]) for row in c.fetchall()]

    def account_docs(self, state: str | None = None) -> Iterator[tuple[str, int, bool]]:
        """(document without folders as stored JSON, folder count, locked) of each account, by login."""
        where, params = _where(state, "")
        with self._cursor(commit=False) as c:
            c.execute(self.sql(f"SELECT doc, folders, locked FROM {{p}}mm_accounts{where} ORDER BY login"), params)
            rows = c.fetchall()
        for row in rows:
            yield row["doc"], int(row["folders"]), bool(row["locked"])

    def states(self) -> list[tuple[str, str]]:
        """Every account's login and state, ordered by login."""
        with self._cursor(commit=False) as c:
            c.execute(self.sql("SELECT login, state FROM {p}mm_accounts ORDER BY login"))
            return [(row["login"], row["state"]) for row in c.fetchall()]

    def account(self, login: str) -> AccountDoc | None:
        with self._cursor(commit=False) as c:
            c.execute(self.sql("SELECT doc, folder_doc FROM {p}mm_accounts WHERE login = %s"), (login,))
            row = c.fetchone()
        return None if row is None else _whole_doc(row["doc"], row["folder_doc"])

    def account_rows(self, state: str | None = None, search: str = "", offset: int = 0,
                     limit: int | None = None) -> list[AccountRow]:
        """The list columns of the accounts in `state` whose login holds `search`, by login, one page."""
        where, params = _where(state, search)
        page = f" LIMIT {int(limit)} OFFSET {int(offset)}" if limit is not None else ""
        with self._cursor(commit=False) as c:
            c.execute(self.sql(f"SELECT {', '.join(ROW_COLUMNS)} FROM {{p}}mm_accounts{where} ORDER BY login{page}"),
                      params)
            rows: list[AccountRow] = [
                {"login": r["login"], "state": r["state"], "locked": bool(r["locked"]), "folders": int(r["folders"]),
                 "messages": int(r["messages"]), "bytes": int(r["bytes"]), "planned_bytes": int(r["planned_bytes"]),
                 "started_at": r["started_at"], "completed_at": r["completed_at"], "error": r["error"],
                 "updated_at": r["updated_at"] or "", "node": r["node"] or ""}
                for r in c.fetchall()
            ]
        return rows

    def account_count(self, state: str | None = None, search: str = "") -> int:
        where, params = _where(state, search)
        with self._cursor(commit=False) as c:
            c.execute(self.sql(f"SELECT COUNT(*) AS n FROM {{p}}mm_accounts{where}"), params)
            return int(c.fetchone()["n"])

    def roster_logins(self) -> set[str]:
        """The logins on the roster."""
        with self._cursor(commit=False) as c:
            c.execute(self.sql("SELECT login FROM {p}mm_accounts WHERE on_roster = 1"))
            return {row["login"] for row in c.fetchall()}

    def state_totals(self) -> list[StateTotals]:
        """Counts and sums of the accounts, one entry per state present."""
        totals: list[StateTotals] = []
        with self._cursor(commit=False) as c:
            c.execute(self.sql("SELECT state, " + ", ".join(SUMMED) + " FROM {p}mm_totals ORDER BY state"))
            for row in c.fetchall():
                entry = {"state": row["state"], **{name: int(row[name]) for name in SUMMED}}
                for key, query in (("first_started", FIRST_STARTED), ("last_update", LAST_UPDATE)):
                    c.execute(self.sql(query), (row["state"],))
                    entry[key] = c.fetchone()["at"]
                totals.append(entry)  # type: ignore[arg-type]
        return totals

    def logins_in(self, states: Iterable[str]) -> dict[str, list[str]]:
        """The logins of the accounts in each of `states`, by login."""
        chosen = sorted(set(states))
        found: dict[str, list[str]] = {state: [] for state in chosen}
        if not chosen:
            return found
        marks = ", ".join(["%s"] * len(chosen))
        with self._cursor(commit=False) as c:
            c.execute(self.sql(f"SELECT state, login FROM {{p}}mm_accounts WHERE state IN ({marks}) ORDER BY login"),
                      chosen)
            for row in c.fetchall():
                found[row["state"]].append(row["login"])
        return found

    def leases(self, states: Iterable[str], other_than: str) -> list[LeaseRow]:
        """Accounts in `states` with a lease renewed at some time by a node other than `other_than`."""
        chosen = sorted(set(states))
        if not chosen:
            return []
        marks = ", ".join(["%s"] * len(chosen))
        with self._cursor(commit=False) as c:
            c.execute(self.sql(
                "SELECT login, state, node, lease_renewed_at FROM {p}mm_accounts "
                f"WHERE state IN ({marks}) AND lease_renewed_at IS NOT NULL AND node <> %s ORDER BY login"),
                (*chosen, other_than))
            return [{"login": r["login"], "state": r["state"], "node": r["node"],
                     "lease_renewed_at": r["lease_renewed_at"]} for r in c.fetchall()]

    def run(self) -> RunDoc | None:
        return self.load_run()

    def log_lines(self, after: int = 0, limit: int | None = None) -> list[str]:
        """Log lines in order, skipping the first `after`."""
        query = "SELECT line FROM {p}mm_log ORDER BY position, seq"
        query += f" LIMIT {int(limit) if limit is not None else 2**62} OFFSET {int(after)}"
        with self._cursor(commit=False) as c:
            c.execute(self.sql(query))
            return [row["line"] for row in c.fetchall()]

    def log_chunks(self, after: int, size: int) -> Iterator[list[str]]:
        """Log lines in order from line `after` on, `size` at a time (the first skip counts, the rest seek)."""
        with self._cursor(commit=False) as c:
            c.execute(self.sql(f"SELECT position, seq, line FROM {{p}}mm_log ORDER BY position, seq "
                               f"LIMIT {int(size)} OFFSET {int(after)}"))
            rows = c.fetchall()
        while rows:
            yield [row["line"] for row in rows]
            last = rows[-1]
            with self._cursor(commit=False) as c:
                c.execute(self.sql("SELECT position, seq, line FROM {p}mm_log WHERE position > %s OR "
                                   f"(position = %s AND seq > %s) ORDER BY position, seq LIMIT {int(size)}"),
                          (last["position"], last["position"], last["seq"]))
                rows = c.fetchall()

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


def _where(state: str | None, search: str) -> tuple[str, tuple[str, ...]]:
    clauses, params = [], []
    if state is not None:
        clauses.append("state = %s")
        params.append(state)
    if search:
        escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        clauses.append("login LIKE %s ESCAPE '\\'")
        params.append(f"%{escaped}%")
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


def _account_values(account_id: str, doc: AccountDoc) -> tuple[object, ...]:
    """The upsert's values: id, login, state, locked, doc, then `ACCOUNT_COLUMNS`."""
    folders = doc["folders"]
    rest = {key: value for key, value in doc.items() if key != "folders" and key != "redirect"}
    retryable = doc.get("retryable")
    return (
        account_id, doc["login"], doc["state"], int(doc["locked"]), json.dumps(rest, sort_keys=True),
        json.dumps(folders, sort_keys=True), len(folders), doc["messages"], doc["bytes"],
        doc.get("planned_messages", 0), doc.get("planned_bytes", 0), doc.get("skipped", 0), doc.get("logins", 0),
        doc.get("passwords_verified", 0), doc.get("passwords_rejected", 0),
        None if retryable is None else int(retryable), script_outcome(doc.get("post_script")), doc.get("node", ""),
        doc.get("error"), doc.get("started_at"), doc.get("completed_at"), doc["updated_at"],
        doc.get("lease_renewed_at"), int(doc.get("on_roster", False)),
    )


def _whole_doc(doc_text: str, folder_text: str | None) -> AccountDoc:
    doc: AccountDoc = json.loads(doc_text)
    if folder_text is not None:
        folders: dict[str, FolderDoc] = json.loads(folder_text)
        doc["folders"] = folders
    return doc
