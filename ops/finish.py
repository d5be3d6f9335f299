"""`mailmigrator finish`: complete what is pending, then sweep late mail from the old server.

The sweep reuses the copy engine unchanged: it copies each completed
account again from its checkpoints, so only messages above a folder's
checkpoint (same UIDVALIDITY) are fetched, and when UIDVALIDITY changed the
target folder is fingerprinted so nothing is copied twice. The engine's
per-folder checkpoints are gathered by `SweepRecorder` instead of being
recorded as `FolderCopied` (the account is already completed), and become
one `FinishSwept` with the new checkpoints, so a later `finish` starts
from there. After an account's first successful sweep its vault credential
is destroyed (`CredentialDestroyed`).

`finish` does the work itself; a running `serve` keeps routing logins and
shows the run as `finishing` until `FinishCompleted`. An account that `serve`
is copying at this moment (recent checkpoints) is waited for, not copied twice.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
import trio

from mailmigrator.adapters.mail.copier import AccountJob, CopyProgress
from mailmigrator.domain.credentials import Credentials
from mailmigrator.adapters.store.vault import CredentialVault
from mailmigrator.domain.application import MigrationService
from mailmigrator.domain.model import AccountMigration
from mailmigrator.ops.config import Config
from mailmigrator.ops.manual_migration import show_progress
from mailmigrator.ops.composition import Migration, build_migration, copy_engine, require_source, source_limit
from mailmigrator.ops.wiring import open_store
from mailmigrator.projections.follower import MigrationViews
from mailmigrator.projections.log import human_bytes

log = structlog.get_logger("mailmigrator.finish")

T = TypeVar("T")

PENDING_STATES = ("verified", "created", "copying", "failed")
SWEPT_STATES = ("completed", "swept")
# A copy whose last checkpoint is younger than this belongs to a running `serve`.
ACTIVE_COPY_SECONDS = 30.0
NEEDS_LOGIN = "needs the user to log in again (no stored password and no [source] admin_user)"


class SweepRecorder:
    """Stands in for `MigrationService` while the copier sweeps: checkpoints are gathered per account, not recorded."""

    def __init__(self, app: MigrationService) -> None:
        self.app = app
        self.checkpoints: dict[str, dict[str, dict[str, Any]]] = {}
        self.failures: dict[str, str] = {}

    def account(self, login: str) -> AccountMigration:
        return self.app.account(login)

    def record_migration_started(self, login: str, *args: Any, **kwargs: Any) -> int:
        self.checkpoints[login] = {}
        self.failures.pop(login, None)
        return 0

    def record_folder_copied(self, login: str, **checkpoint: Any) -> None:
        folders = self.checkpoints.setdefault(login, {})
        previous = folders.get(checkpoint["source_folder"])
        merged = dict(checkpoint)
        if previous is not None and previous["uidvalidity"] == checkpoint["uidvalidity"]:
            merged["messages"] += previous["messages"]
            merged["bytes"] += previous["bytes"]
        folders[checkpoint["source_folder"]] = merged

    def record_completed(self, login: str, *args: Any, **kwargs: Any) -> None:
        pass

    def record_failed(self, login: str, reason: str, retryable: bool, **_fencing: Any) -> None:
        self.failures[login] = reason


@dataclass
class AccountFinish:
    """What `finish` did with one account."""

    login: str
    result: str  # completed | swept | needs-login | skipped | failed
    detail: str
    messages: int = 0
    bytes: int = 0


@dataclass
class FinishReport:
    accounts: list[AccountFinish] = field(default_factory=list)
    pending: int = 0
    to_sweep: int = 0
    swept: int = 0

    def line(self) -> str:
        late = sum(a.messages for a in self.accounts if a.result == "swept")
        return (f"pending completed {sum(a.result == 'completed' for a in self.accounts)}/{self.pending}, "
                f"swept {self.swept}/{self.to_sweep} accounts, {late:,} late messages")

    @property
    def failed(self) -> list[AccountFinish]:
        return [a for a in self.accounts if a.result == "failed"]


class FinishRun:
    """One `finish` pass over every account."""

    def __init__(self, config: Config, app: MigrationService, migration: Migration) -> None:
        self.config = config
        self.app = app
        self.migration = migration
        self.vault: CredentialVault | None = migration.vault
        self.recorder = SweepRecorder(app)
        # The sweep copies under the node's own limit on connections to the old server.
        limit = migration.limit or source_limit(config)
        self.sweeper = copy_engine(config, self.recorder, migration.servers, limit, CopyProgress())  # type: ignore[arg-type]
        self.report = FinishReport()
        self._limiter = trio.CapacityLimiter(1)

    async def _call(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    def _credentials(self, login: str) -> Credentials | None:
        """How to log in to the old server for `login`: admin (empty password), the vault's password, or None."""
        name = self.migration.servers.source_name(login, login)
        if self.vault is None:
            return Credentials(name, "")
        password = self.vault.get(login)
        return Credentials(name, password) if password is not None else None

    async def run(self, logins_by_state: dict[str, list[str]]) -> FinishReport:
        pending = [login for state in PENDING_STATES for login in logins_by_state.get(state, [])]
        self.report.pending = len(pending)
        slots = trio.Semaphore(self.config.migration.concurrency)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(show_progress, self.report.line, sys.stderr, sys.stderr.isatty())
            async with trio.open_nursery() as work:
                for login in pending:
                    work.start_soon(self._complete, login, slots)
            settled = [login for state in SWEPT_STATES for login in logins_by_state.get(state, [])]
            settled += [a.login for a in self.report.accounts if a.result == "completed"]
            self.report.to_sweep = len(settled)
            async with trio.open_nursery() as work:
                for login in settled:
                    work.start_soon(self._sweep, login, slots)
            nursery.cancel_scope.cancel()
        return self.report

    async def _complete(self, login: str, slots: trio.Semaphore) -> None:
        async with slots:
            account = await self._wait_for_running_copy(login)
            if account.state in SWEPT_STATES:
                self.report.accounts.append(AccountFinish(login, "completed", "completed by the running service"))
                return
            credentials = await self._call(lambda: self._credentials(login))
            if credentials is None:
                self.report.accounts.append(AccountFinish(login, "needs-login", NEEDS_LOGIN))
                return
            outcome = await self.migration.migrate.run(login, credentials)
        if outcome.ok:
            self.report.accounts.append(AccountFinish(login, "completed", outcome.message))
        else:
            self.report.accounts.append(AccountFinish(login, "failed", f"completing: {outcome.message}"))

    async def _wait_for_running_copy(self, login: str) -> AccountMigration:
        while True:
            account = await self._call(lambda: self.app.account(login))
            age = time.time() - account.modified_on.timestamp()
            if account.state != "copying" or age > ACTIVE_COPY_SECONDS:
                return account
            await trio.sleep(1.0)

    async def _sweep(self, login: str, slots: trio.Semaphore) -> None:
        async with slots:
            account = await self._call(lambda: self.app.account(login))
            credentials = await self._call(lambda: self._credentials(login))
            if credentials is None:
                if account.state == "swept":
                    self.report.accounts.append(AccountFinish(
                        login, "skipped", "swept before; its password is destroyed (an admin login sweeps again)"))
                else:
                    self.report.accounts.append(AccountFinish(login, "needs-login", NEEDS_LOGIN))
                return
            servers = self.migration.servers
            job = AccountJob(login, servers.copy_plan(credentials.login, login, credentials.password or None),
                             servers.target_plan(account.target_login or login))
            result = await self.sweeper.copy_account(job)
        if not result.ok or login in self.recorder.failures:
            reason = self.recorder.failures.get(login) or result.error or "sweep failed"
            log.warning("finish sweep failed", login=login, error=reason)
            self.report.accounts.append(AccountFinish(login, "failed", f"sweep: {reason}"))
            return
        gathered = self.recorder.checkpoints.pop(login, {})
        per_folder = {name: int(cp["messages"]) for name, cp in gathered.items()}
        messages, size = sum(per_folder.values()), sum(int(cp["bytes"]) for cp in gathered.values())
        checkpoints = {
            name: {"target": cp["target_folder"], "uidvalidity": cp["uidvalidity"], "highest_uid": cp["highest_uid"],
                   "messages": cp["messages"], "bytes": cp["bytes"], "done": True,
                   "target_uidvalidity": cp["target_uidvalidity"], "target_uidnext": cp["target_uidnext"],
                   "last_uidl": cp["last_uidl"]}
            for name, cp in gathered.items()
        }
        await self._call(lambda: self.app.record_swept(login, per_folder, messages, size, checkpoints))
        if self.vault is not None and await self._call(lambda: self.vault.destroy(login)):  # type: ignore[union-attr]
            await self._call(lambda: self.app.record_credential_destroyed(login, "first finish sweep succeeded"))
        self.report.swept += 1
        log.info("finish sweep", login=login, messages=messages, folders=per_folder)
        self.report.accounts.append(AccountFinish(login, "swept", f"{messages:,} late messages copied", messages, size))


async def finish_migration(config: Config, app: MigrationService, views: MigrationViews,
                           migration: Migration) -> FinishReport:
    """The finish work, once claimed: complete what is pending, sweep every migrated account, record FinishCompleted."""
    await trio.to_thread.run_sync(views.catch_up)
    by_state = {
        state: [doc["login"] for doc in await trio.to_thread.run_sync(views.accounts, state)]
        for state in PENDING_STATES + SWEPT_STATES
    }
    report = await FinishRun(config, app, migration).run(by_state)
    swept = [a for a in report.accounts if a.result == "swept"]
    await trio.to_thread.run_sync(app.complete_finish, len(swept), sum(a.messages for a in swept))
    await trio.to_thread.run_sync(views.catch_up)
    return report


def cmd_finish(config: Config, args: argparse.Namespace) -> int:
    """Record Finish Migration, complete pending accounts, sweep, record FinishCompleted; exit 1 when any failed."""
    from mailmigrator.ops.logs import configure_logging

    configure_logging()
    require_source(config)
    wired = open_store(config, create=True)
    assert wired is not None
    try:
        app = wired.app
        app.configure_run(config.general_settings())
        app.request_finish("cli")
        started = time.monotonic()
        if not app.claim_finish(config.migration.node_name):
            return _wait_for_finish_elsewhere(app, started)
        report = trio.run(finish_migration, config, app, wired.views, build_migration(config, app))
    finally:
        wired.close()
    swept = [a for a in report.accounts if a.result == "swept"]
    width = max([len("LOGIN")] + [len(a.login) for a in report.accounts])
    if report.accounts:
        print(f"{'LOGIN':{width}}  {'RESULT':11}  {'LATE':>6}  {'SIZE':>10}  DETAIL")
        for a in sorted(report.accounts, key=lambda a: (a.login, a.result)):
            print(f"{a.login:{width}}  {a.result:11}  {a.messages:>6,}  {human_bytes(a.bytes):>10}  {a.detail}")
    needs_login = sum(a.result == "needs-login" for a in report.accounts)
    print(f"finish: {len(swept)} account(s) swept, {sum(a.messages for a in swept):,} late message(s) copied, "
          f"{needs_login} need the user to log in again, {len(report.failed)} failed "
          f"({time.monotonic() - started:.1f} s)")
    return 1 if report.failed else 0


def _wait_for_finish_elsewhere(app: MigrationService, started: float) -> int:
    """A running `serve` took the finish work on; follow it until the run is finished."""
    run = app.run()
    print(f"finish: being done by {run.finish_claimed_by}; waiting (Ctrl-C leaves it running there)", file=sys.stderr)
    while run.state == "finishing":
        time.sleep(2.0)
        run = app.run()
    if run.state != "finished":
        print(f"finish: the run went to {run.state!r} before the finish completed", file=sys.stderr)
        return 1
    print(f"finish: completed by {run.finish_claimed_by} ({time.monotonic() - started:.1f} s); "
          "`mailmigrator log` has the details")
    return 0
