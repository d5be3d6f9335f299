"""Finish the migration: complete what is pending, sweep late mail from the old server, record the finish.

Each completed account is copied again from its checkpoints (the sweeper
fetches only what arrived since) and its new checkpoints are recorded as one
`FinishSwept`, so a later `finish` starts from there. After an account's first
successful sweep its stored password is destroyed (`CredentialDestroyed`). An
account a running `serve` is copying at this moment (recent checkpoints) is
waited for, not copied twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

import structlog
import trio

from mailmigrator.domain.checkpoints import CheckpointFields
from mailmigrator.domain.model import AccountMigration
from mailmigrator.domain.states import NOT_SEEN_STATES, SETTLED_STATES, UNFINISHED_STATES
from mailmigrator.domain.use_cases.lease_takeover import resume_credentials
from mailmigrator.domain.use_cases.migrate_account import MigrateAccount
from mailmigrator.domain.use_cases.ports import CredentialStore, MailServers
from mailmigrator.domain.use_cases.records import MigrationRecords

log = structlog.get_logger("mailmigrator.finish")

# A copy whose last checkpoint is younger than this belongs to a running `serve`.
ACTIVE_COPY_SECONDS = 30.0
NEEDS_LOGIN = "needs the user to log in again (no stored password and no [source] admin_user)"


class SweepResult(Protocol):
    ok: bool
    error: str
    per_folder: dict[str, int]
    bytes: int
    checkpoints: dict[str, CheckpointFields]

    @property
    def messages(self) -> int: ...


class Sweeper(Protocol):
    """The copy engine in sweep mode (`adapters.mail.sweep.AccountSweeper`)."""

    async def sweep(self, login: str, source_name: str, password: str | None, target_login: str) -> SweepResult: ...


class AccountsByState(Protocol):
    """The account projection's logins per state (`ops.composition.AccountViews`)."""

    def logins_in(self, states: frozenset[str]) -> dict[str, list[str]]: ...


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
    never_migrated: list[str] = field(default_factory=list)  # roster accounts whose owner never logged in

    def line(self) -> str:
        late = sum(a.messages for a in self.accounts if a.result == "swept")
        return (f"pending completed {sum(a.result == 'completed' for a in self.accounts)}/{self.pending}, "
                f"swept {self.swept}/{self.to_sweep} accounts, {late:,} late messages")

    @property
    def failed(self) -> list[AccountFinish]:
        return [a for a in self.accounts if a.result == "failed"]


@dataclass
class FinishSweep:
    """One `finish` pass over every account, `concurrency` accounts at a time."""

    records: MigrationRecords
    servers: MailServers
    migrate: MigrateAccount
    sweeper: Sweeper
    views: AccountsByState
    vault: CredentialStore | None
    concurrency: int
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
    report: FinishReport = field(default_factory=FinishReport)

    async def run(self, show: Callable[[Callable[[], str]], Awaitable[None]] | None = None) -> FinishReport:
        """Complete, sweep, then record `FinishCompleted` with the sweep's totals."""
        by_state = await self.records.in_thread(lambda: self.views.logins_in(UNFINISHED_STATES | SETTLED_STATES | NOT_SEEN_STATES))
        self.report.never_migrated = sorted(login for state in NOT_SEEN_STATES for login in by_state.get(state, []))
        async with trio.open_nursery() as nursery:
            if show is not None:
                nursery.start_soon(show, self.report.line)
            await self.complete_pending([login for state in sorted(UNFINISHED_STATES)
                                         for login in by_state.get(state, [])])
            settled = [login for state in sorted(SETTLED_STATES) for login in by_state.get(state, [])]
            await self.sweep_all(settled + [a.login for a in self.report.accounts if a.result == "completed"])
            nursery.cancel_scope.cancel()
        swept = [a for a in self.report.accounts if a.result == "swept"]
        await self.records.in_thread(
            lambda: self.records.service.complete_finish(len(swept), sum(a.messages for a in swept)))
        return self.report

    async def complete_pending(self, pending: list[str]) -> None:
        self.report.pending = len(pending)
        await self.each(pending, self.complete)

    async def sweep_all(self, settled: list[str]) -> None:
        self.report.to_sweep = len(settled)
        await self.each(settled, self.sweep)

    async def each(self, logins: list[str], work: Callable[[str, trio.Semaphore], Awaitable[None]]) -> None:
        """Run `work` for every login, `concurrency` at a time."""
        slots = trio.Semaphore(self.concurrency)
        async with trio.open_nursery() as nursery:
            for login in logins:
                nursery.start_soon(work, login, slots)

    async def complete(self, login: str, slots: trio.Semaphore) -> None:
        """Migrate an account that never completed, with its stored password (or the admin login)."""
        async with slots:
            account = await self.wait_for_running_copy(login)
            if account.state in SETTLED_STATES:
                self.report.accounts.append(AccountFinish(login, "completed", "completed by the running service"))
                return
            credentials = await self.records.in_thread(lambda: resume_credentials(self.servers, self.vault, login))
            if credentials is None:
                self.report.accounts.append(AccountFinish(login, "needs-login", NEEDS_LOGIN))
                return
            outcome = await self.migrate.run(login, credentials)
        result, detail = ("completed", outcome.message) if outcome.ok else ("failed", f"completing: {outcome.message}")
        self.report.accounts.append(AccountFinish(login, result, detail))

    async def wait_for_running_copy(self, login: str) -> AccountMigration:
        while True:
            account = await self.records.account(login)
            age = (self.clock() - account.modified_on).total_seconds()
            if account.state != "copying" or age > ACTIVE_COPY_SECONDS:
                return account
            await trio.sleep(1.0)

    async def sweep(self, login: str, slots: trio.Semaphore) -> None:
        """Copy what reached the old server since the account's checkpoints; record it; destroy the password."""
        async with slots:
            account = await self.records.account(login)
            credentials = await self.records.in_thread(lambda: resume_credentials(self.servers, self.vault, login))
            if credentials is None:
                self.report.accounts.append(self.without_password(login, account))
                return
            result = await self.sweeper.sweep(login, credentials.login, credentials.password or None,
                                              account.target_login or login)
        if not result.ok:
            log.warning("finish sweep failed", login=login, error=result.error)
            self.report.accounts.append(AccountFinish(login, "failed", f"sweep: {result.error}"))
            return
        await self.records.in_thread(lambda: self.records.service.record_swept(
            login, result.per_folder, result.messages, result.bytes, result.checkpoints))
        vault = self.vault
        if vault is not None and await self.records.in_thread(lambda: vault.destroy(login)):
            await self.records.credential_destroyed(login, "first finish sweep succeeded")
        self.report.swept += 1
        log.info("finish sweep", login=login, messages=result.messages, folders=result.per_folder)
        self.report.accounts.append(AccountFinish(login, "swept", f"{result.messages:,} late messages copied",
                                                  result.messages, result.bytes))

    @staticmethod
    def without_password(login: str, account: AccountMigration) -> AccountFinish:
        if account.state == "swept":
            return AccountFinish(login, "skipped",
                                 "swept before; its password is destroyed (an admin login sweeps again)")
        return AccountFinish(login, "needs-login", NEEDS_LOGIN)
