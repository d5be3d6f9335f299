"""The tracked follower that keeps every read model in step with the event store.

It pulls notifications after its tracking position (this works on SQLite,
whose recorder cannot `subscribe`, and on PostgreSQL alike), folds a batch of
them into view rows, and commits rows and position together.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from eventsourcing.persistence import Notification

from mailmigrator.domain.application import MigrationService, aggregate_event
from mailmigrator.domain.model import RUN_ID, AccountMigration
from mailmigrator.projections.accounts import (
    AccountDoc,
    RunDoc,
    apply_to_account,
    apply_to_run,
    iso,
    new_account_doc,
    new_run_doc,
)
from mailmigrator.projections.log import account_lines, run_lines
from mailmigrator.projections.viewstore import StalePosition, ViewBatch, ViewStore

BATCH_SIZE = 1000


def view_store_for(app: MigrationService) -> ViewStore:
    """The view tables on the same database as the application's events."""
    store: ViewStore = ViewStore.on(app.factory)
    store.create_tables()
    return store


class MigrationViews:
    """Account status, run status and the migration log, plus the queries on them."""

    def __init__(self, app: MigrationService, log_file: Path | None = None) -> None:
        self.app = app
        self.store = view_store_for(app)
        self.log_file = log_file

    def catch_up(self, batch_size: int = BATCH_SIZE) -> int:
        """Apply every event not yet in the views; returns how many were applied."""
        applied = 0
        while True:
            start = self.store.position()
            notifications = self.app.recorder.select_notifications(
                start=start + 1, limit=batch_size
            )
            if not notifications:
                break
            batch = self._fold(start, notifications)
            try:
                self.store.commit(batch)
            except StalePosition:
                continue
            applied += len(notifications)
        self.sync_log_file()
        return applied

    def replay(self) -> int:
        """Drop every view and the log file, then rebuild them from the first event."""
        self.store.drop_all()
        if self.log_file is not None and self.log_file.exists():
            with self._locked_log() as f:
                f.truncate(0)
        return self.catch_up()

    def _fold(self, start: int, notifications: Sequence[Notification]) -> ViewBatch:
        events = [(n.id, aggregate_event(self.app.mapper.to_domain_event(n))) for n in notifications]
        batch = ViewBatch(start_position=start, end_position=notifications[-1].id)
        ids = sorted({str(e.originator_id) for _, e in events if e.originator_id != RUN_ID})
        known = self.store.load_accounts(ids)
        run = self.store.load_run() or new_run_doc()
        run_changed = False
        for position, event in events:
            if event.originator_id == RUN_ID:
                apply_to_run(run, event)
                run_changed = True
                lines = run_lines(event)
                login = "-"
            else:
                key = str(event.originator_id)
                doc = batch.accounts.get(key) or known.get(key)
                if doc is None:
                    if not isinstance(event, AccountMigration.Registered):
                        raise RuntimeError(f"event {position} belongs to an account never registered")
                    doc = new_account_doc(event.login, iso(event.timestamp))
                else:
                    apply_to_account(doc, event)
                batch.accounts[key] = doc
                lines = account_lines(event, doc)
                login = doc["login"]
            for seq, line in enumerate(lines):
                batch.log_lines.append((position, seq, login, line))
        if run_changed:
            batch.run = run
        return batch

    # Queries

    def run_status(self) -> RunDoc:
        return self.store.load_run() or new_run_doc()

    def accounts(self, state: str | None = None) -> list[AccountDoc]:
        migration_account = self._migration_account()
        return [_with_redirect(doc, migration_account) for doc in self.store.accounts(state)]

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
            lines = self.store.log_lines(after=written)
            if lines:
                f.seek(0, os.SEEK_END)
                f.write("".join(line + "\n" for line in lines).encode())
                f.flush()
                os.fsync(f.fileno())
            st = os.fstat(f.fileno())
            if lines or recorded is None:
                self.store.set_logfile_state(path, written + len(lines), st.st_size, st.st_ino)
            return len(lines)

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
