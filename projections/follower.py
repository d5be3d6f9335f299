"""The tracked follower that keeps every read model in step with the event store.

It pulls the stored events after its tracking position (this works on SQLite,
whose recorder cannot `subscribe`, and on PostgreSQL alike), folds a batch of
them into view rows, and commits rows and position together.

The events are read as rows and decoded by the application's own mapper, with
each account's id made once per batch: at a replay's rate, building a
`Notification` and a `UUID` per event costs as much as the fold.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol
from uuid import UUID

import structlog
from eventsourcing.persistence import StoredEvent

from mailmigrator.domain.application import MigrationService, aggregate_event
from mailmigrator.domain.errors import ExplainedError
from mailmigrator.domain.logins import is_map_key
from mailmigrator.domain.model import RUN_ID, AccountMigration
from mailmigrator.domain.states import delivered_by_old_server
from mailmigrator.projections.accounts import (
    AccountDoc,
    AccountRow,
    LeaseRow,
    RunDoc,
    StateTotals,
    apply_to_account,
    apply_to_run,
    iso,
    new_account_doc,
    new_run_doc,
)
from mailmigrator.projections.log import account_lines, run_lines
from mailmigrator.projections.viewstore import StalePosition, ViewBatch, ViewStore

BATCH_SIZE = 1000
# A replay folds larger batches: fewer commits, and each account written once per batch.
REPLAY_BATCH_SIZE = 20_000
# Log lines read and appended to the log file at a time.
LOG_CHUNK = 10_000

log = structlog.get_logger("mailmigrator.views")


class RoutingMap(Protocol):
    """A mail routing file derived from the account view (`adapters.accounts.transport_map.TransportMap`)."""

    def rewrite(self, logins: Sequence[str], position: int, *, force: bool = False) -> bool: ...


def view_store_for(app: MigrationService) -> ViewStore:
    """The view tables on the same database as the application's events."""
    store: ViewStore = ViewStore.on(app.factory)
    store.create_tables()
    return store


class MigrationViews:
    """Account status, run status and the migration log, plus the queries on them."""

    def __init__(self, app: MigrationService, log_file: Path | None = None,
                 transport_map: RoutingMap | None = None) -> None:
        self.app = app
        self.store = view_store_for(app)
        self.log_file = log_file
        self.transport_map = transport_map
        # Written once per process whatever the batches hold: a crash may have come between commit and write.
        self._transport_map_due = transport_map is not None

    def catch_up(self, batch_size: int = BATCH_SIZE) -> int:
        """Apply every event not yet in the views; returns how many were applied."""
        applied = self._apply_batches(batch_size)
        self.sync_log_file()
        self.sync_transport_map()
        return applied

    def replay(self, batch_size: int = REPLAY_BATCH_SIZE) -> int:
        """Drop every view and the log file, then rebuild them from the first event."""
        self.store.drop_all()
        appender = None
        if self.log_file is not None:
            with self._locked_log() as f:
                f.truncate(0)
                self.store.set_logfile_state(str(self.log_file), 0, 0, os.fstat(f.fileno()).st_ino)
            appender = self._batch_appender()
        applied = self._apply_batches(batch_size, appender)
        self.sync_log_file()
        self.sync_transport_map(force=True)
        return applied

    def _apply_batches(self, batch_size: int, committed: Callable[[ViewBatch], None] | None = None) -> int:
        applied = 0
        table = self.app.recorder.events_table_name  # type: ignore[attr-defined]
        while True:
            start = self.store.position()
            rows = self.store.stored_events(table, start, batch_size)
            if not rows:
                break
            batch = self._fold(start, rows)
            try:
                self.store.commit(batch)
            except StalePosition:
                continue
            applied += len(rows)
            if committed is not None:
                committed(batch)
        return applied

    def _fold(self, start: int, rows: Sequence[tuple[int, str, int, str, bytes]]) -> ViewBatch:
        batch = ViewBatch(start_position=start, end_position=rows[-1][0])
        # The stored id's text differs by engine (SQLite keeps it without dashes): the views key by str(UUID).
        ids = {raw: UUID(raw) for raw in {row[1] for row in rows}}
        keys = {raw: str(uuid) for raw, uuid in ids.items()}
        run_key = str(RUN_ID)
        known = self.store.load_accounts(sorted(key for key in keys.values() if key != run_key))
        old_routes = {key: delivered_by_old_server(doc["state"]) for key, doc in known.items()}
        run = (self.store.load_run() or new_run_doc()) if run_key in keys.values() else None
        to_event = self.app.mapper.to_domain_event
        log_lines = batch.log_lines
        accounts = batch.accounts
        for position, raw, version, topic, state in rows:
            event = aggregate_event(to_event(StoredEvent(ids[raw], version, topic, state)))
            key = keys[raw]
            at = iso(event.timestamp)
            if key == run_key:
                assert run is not None
                apply_to_run(run, event)
                lines = run_lines(event)
                login = "-"
            else:
                doc = accounts.get(key) or known.get(key)
                if doc is None:
                    if not isinstance(event, AccountMigration.Registered):
                        raise RuntimeError(f"event {position} belongs to an account never registered")
                    doc = new_account_doc(event.login, at, event.initial_state)
                else:
                    apply_to_account(doc, event, at)
                accounts[key] = doc
                lines = account_lines(event, doc, at)
                login = doc["login"]
            for seq, line in enumerate(lines):
                log_lines.append((position, seq, login, line))
        batch.run = run
        if any(old_routes.get(key) != delivered_by_old_server(doc["state"]) for key, doc in batch.accounts.items()):
            self._transport_map_due = self.transport_map is not None
        return batch

    def sync_transport_map(self, *, force: bool = False) -> bool:
        """Rewrite the transport map from the account view when a batch changed whose mail goes where.

        Returns whether it was written; a failure is logged and retried at the next catch-up.
        """
        if self.transport_map is None or not (self._transport_map_due or force):
            return False
        # The position first: the states read after it are at least as new as it says.
        position = self.store.position()
        routed = [login for login, state in self.store.states() if delivered_by_old_server(state)]
        keys = [login for login in routed if is_map_key(login)]
        if len(keys) != len(routed):
            log.warning("logins left out of the transport map: not a plain user@domain",
                        logins=sorted(set(routed) - set(keys))[:10])
        try:
            written = self.transport_map.rewrite(keys, position, force=force)
        except Exception as e:  # the views are committed; the map catches up at the next batch
            log.warning("cannot write the transport map",
                        error=str(e) if isinstance(e, ExplainedError) else type(e).__name__)
            return False
        self._transport_map_due = False
        return written

    # Queries

    def run_status(self) -> RunDoc:
        return self.store.load_run() or new_run_doc()

    def accounts(self, state: str | None = None) -> list[AccountDoc]:
        migration_account = self._migration_account()
        return [_with_redirect(doc, migration_account) for doc in self.store.accounts(state)]

    def account_summaries(self, state: str | None = None) -> list[str]:
        """Each account's document as a line of JSON, its folders counted, not listed (what `status --json` prints).

        The stored text is spliced, not parsed and written again: at 100,000 accounts that round trip was most
        of the command's time. The two keys added come first; the stored ones follow in sorted order.
        """
        migration_account = self._migration_account()
        redirect = json.dumps(migration_account or None)
        found: list[str] = []
        for text, folders, locked in self.store.account_docs(state):
            found.append(f'{{"folders": {folders}, "redirect": {redirect if locked else "null"}, {text[1:]}')
        return found

    def state_totals(self) -> list[StateTotals]:
        return self.store.state_totals()

    def roster_logins(self) -> set[str]:
        return self.store.roster_logins()

    def account_rows(self, state: str | None = None, search: str = "", offset: int = 0,
                     limit: int | None = None) -> list[AccountRow]:
        return self.store.account_rows(state, search, offset, limit)

    def account_count(self, state: str | None = None, search: str = "") -> int:
        return self.store.account_count(state, search)

    def logins_in(self, states: Iterable[str]) -> dict[str, list[str]]:
        return self.store.logins_in(states)

    def leases(self, states: Iterable[str], other_than: str) -> list[LeaseRow]:
        return self.store.leases(states, other_than)

    def account(self, login: str) -> AccountDoc | None:
        doc = self.store.account(login)
        return None if doc is None else _with_redirect(doc, self._migration_account())

    def log_lines(self, after: int = 0) -> list[str]:
        return self.store.log_lines(after=after)

    def _migration_account(self) -> str:
        return str(self.run_status()["settings"].get("migration_account") or "")

    # The log file is a copy of the log table: appended after the rows commit,
    # with (lines, size, inode) recorded so that a crash between append and
    # record is cut back rather than written twice, and a rotated file is
    # continued rather than refilled.

    def sync_log_file(self) -> int:
        """Append to the log file the lines it lacks; returns how many."""
        if self.log_file is None:
            return 0
        path = str(self.log_file)
        with self._locked_log() as f:
            st = os.fstat(f.fileno())
            recorded = self.store.logfile_state(path)
            if recorded is None:
                written = 0
            else:
                written, size, inode = recorded
                if st.st_ino == inode and st.st_size >= size:
                    f.truncate(size)
            f.seek(0, os.SEEK_END)
            appended = 0
            for lines in self.store.log_chunks(written, LOG_CHUNK):
                f.write("".join(line + "\n" for line in lines).encode())
                appended += len(lines)
            if appended:
                f.flush()
                os.fsync(f.fileno())
            st = os.fstat(f.fileno())
            if appended or recorded is None:
                self.store.set_logfile_state(path, written + appended, st.st_size, st.st_ino)
            return appended

    def _batch_appender(self) -> Callable[[ViewBatch], None]:
        """During a replay, each committed batch's lines go to the log file from memory, not read back.

        Only while the file is where this replay left it: once anything else has written it (another process's
        catch-up), the appender stops and the final `sync_log_file` copies the rest from the table."""
        assert self.log_file is not None
        path = str(self.log_file)
        expected = self.store.logfile_state(path)

        def append(batch: ViewBatch) -> None:
            nonlocal expected
            if expected is None or not batch.log_lines:
                return
            with self._locked_log() as f:
                st = os.fstat(f.fileno())
                if self.store.logfile_state(path) != expected or (st.st_size, st.st_ino) != expected[1:]:
                    expected = None
                    return
                f.seek(0, os.SEEK_END)
                f.write("".join(line + "\n" for *_, line in batch.log_lines).encode())
                f.flush()
                os.fsync(f.fileno())
                st = os.fstat(f.fileno())
                expected = (expected[0] + len(batch.log_lines), st.st_size, st.st_ino)
                self.store.set_logfile_state(path, *expected)

        return append

    def _locked_log(self) -> _LockedFile:
        assert self.log_file is not None
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        return _LockedFile(self.log_file)


class _LockedFile:
    """The log file opened for appending under an exclusive lock."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> BinaryIO:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        self.file = os.fdopen(fd, "r+b")
        fcntl.flock(self.file.fileno(), fcntl.LOCK_EX)
        return self.file

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.file.fileno(), fcntl.LOCK_UN)
        self.file.close()


def _with_redirect(doc: AccountDoc, migration_account: str) -> AccountDoc:
    doc["redirect"] = migration_account if doc["locked"] and migration_account else None
    return doc
