"""The service layer: get an aggregate, call it, save it. No network I/O here.

Which store it records into is decided by the environment it is given
(the library's own settings: PERSISTENCE_MODULE, SQLITE_DBNAME, POSTGRES_*).
"""

from __future__ import annotations

import random
from functools import partial
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TypeVar, Unpack
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate, DomainEventProtocol
from eventsourcing.persistence import RecordConflictError

from mailmigrator.domain.checkpoints import CheckpointFields, FolderCopiedFields
from mailmigrator.domain.errors import AccountNotFound, ConcurrentUpdate
from mailmigrator.domain.filters import FilterReport, RefusedScriptFields, ScriptFields
from mailmigrator.domain.logins import account_id
from mailmigrator.domain.model import DEFAULT_LEASE_SECONDS, RUN_ID, AccountMigration, MigrationRun, PlannedFolderFields
from mailmigrator.domain.states import UNVERIFIED_STATES

T = TypeVar("T")
AggregateT = TypeVar("AggregateT", AccountMigration, MigrationRun)

# Concurrent writers to one aggregate are rare (parallel logins of one user,
# two nodes); reloads with a short random pause settle them.
ROSTER_BATCH = 500
CONFLICT_RETRIES = 30


class MigrationService(Application[UUID]):
    """Records what happens to accounts and to the run, as events."""

    name = "mailmigrator"

    def account(self, login: str) -> AccountMigration:
        """The account's aggregate; `AccountNotFound` when nothing is recorded."""
        try:
            return self.repository.get(account_id(login))
        except AggregateNotFoundError:
            raise AccountNotFound(login) from None

    def has_account(self, login: str) -> bool:
        return account_id(login) in self.repository

    def run(self) -> MigrationRun:
        """The migration run; a fresh stopped one when nothing is recorded yet."""
        try:
            return self.repository.get(RUN_ID)
        except AggregateNotFoundError:
            return MigrationRun()

    def history(self, login: str) -> list[Aggregate.Event]:
        """Every event of one account, oldest first."""
        events = [aggregate_event(e) for e in self.events.get(account_id(login))]
        if not events:
            raise AccountNotFound(login)
        return events

    def update_account(
        self,
        login: str,
        command: Callable[[AccountMigration], T],
        *,
        register: bool = False,
    ) -> T:
        """Apply `command` to the account and save, reloading on a concurrent write.

        With `register`, an account not yet recorded is registered first.
        """
        return self._update(lambda: self._load_account(login, register), command)

    def update_run(self, command: Callable[[MigrationRun], T]) -> T:
        """Apply `command` to the run and save, reloading on a concurrent write."""
        return self._update(self.run, command)

    def _load_account(self, login: str, register: bool) -> AccountMigration:
        try:
            return self.repository.get(account_id(login))
        except AggregateNotFoundError:
            if not register:
                raise AccountNotFound(login) from None
            return AccountMigration(login=login)

    def _update(self, load: Callable[[], AggregateT], command: Callable[[AggregateT], T]) -> T:
        for _ in range(CONFLICT_RETRIES):
            aggregate = load()
            result = command(aggregate)
            if not aggregate.pending_events:
                return result
            try:
                self.save(aggregate)
            except RecordConflictError:
                # Random spread so that the same writers do not collide again in step.
                time.sleep(random.uniform(0, 0.02))
                continue
            return result
        raise ConcurrentUpdate(
            f"gave up after {CONFLICT_RETRIES} concurrent updates; try again"
        )

    # Account commands, named as the admin would say them.

    def record_login(
        self, login: str, protocol: str, client_address: str, local_address: str
    ) -> AccountMigration:
        def see(account: AccountMigration) -> AccountMigration:
            if account.allows("LoginSeen"):
                account.see_login(protocol, client_address, local_address)
            return account

        return self.update_account(login, see, register=True)

    def record_password_verified(self, login: str, method: str, while_copying: str = "") -> bool:
        """Record a verified password; True when this call moved the account out of `seen`.

        `while_copying`: where the user goes while the copy runs, recorded first when due, so that
        the account is never shown locked in old-server mode.
        """

        def verify(account: AccountMigration) -> bool:
            first = account.state in UNVERIFIED_STATES
            if while_copying and account.copy_mode_due(while_copying):
                account.choose_copy_mode(while_copying)
            account.verify_password(method)
            return first

        return self.update_account(login, verify, register=True)

    def record_expected(self, logins: Sequence[str], source: str) -> list[str]:
        """Put `logins` on the roster (`source`: how, e.g. the file imported); returns those not on it before.

        An account never recorded is registered as `expected`; one already on the roster gets no new event.
        """
        def expect(account: AccountMigration) -> bool:
            if account.on_roster:
                return False
            account.expect(source)
            return True

        added: list[str] = []
        for start in range(0, len(logins), ROSTER_BATCH):
            batch = [account for login in logins[start:start + ROSTER_BATCH]
                     if expect(account := self._load_or_expect(login))]
            try:
                # One transaction per batch: a roster of thousands is recorded in seconds.
                self.save(*batch)
            except RecordConflictError:
                batch = [a for a in batch if self._update(partial(self._load_or_expect, a.login), expect)]
            added += [account.login for account in batch]
        return added

    def _load_or_expect(self, login: str) -> AccountMigration:
        try:
            return self.repository.get(account_id(login))
        except AggregateNotFoundError:
            return AccountMigration(login=login, initial_state="expected")

    def record_removed_from_roster(self, login: str, source: str) -> None:
        """Take `login` off the roster; an account never seen is withdrawn from the run's counts."""

        def remove(account: AccountMigration) -> None:
            if account.on_roster:
                account.remove_from_roster(source)

        self.update_account(login, remove)

    def record_account_prepared(self, login: str, target_login: str, provisioner: str) -> None:
        """Record the account created on the new server without a usable password, ahead of its first login."""
        self.update_account(login, lambda a: a.prepare_account(target_login, provisioner))

    def record_password_set(self, login: str, provisioner: str) -> None:
        """Record the verified password set on an account prepared without one."""
        self.update_account(login, lambda a: a.set_password(provisioner))

    def record_comparison(self, login: str, equal: bool, differences: int, examples: list[str], node: str) -> None:
        """Record the outcome of a `verify` of the account: equal, or how many differences and the first few."""
        self.update_account(login, lambda a: a.record_comparison(equal, differences, list(examples), node))

    def record_password_rejected(self, login: str, reason: str) -> None:
        self.update_account(login, lambda a: a.reject_password(reason), register=True)

    def record_account_created(
        self,
        login: str,
        target_login: str,
        aliases: list[str],
        provisioner: str,
        rejected_aliases: Sequence[Mapping[str, str]] = (),
    ) -> None:
        """Record the account's creation with the aliases it got and, saved with it, those it did not."""

        def create(account: AccountMigration) -> None:
            account.create_account(target_login, aliases, provisioner)
            if rejected_aliases:
                account.reject_aliases([{"address": r["address"], "reason": r["reason"]} for r in rejected_aliases])

        self.update_account(login, create)

    def record_migration_started(
        self,
        login: str,
        folders: list[PlannedFolderFields],
        total_messages: int,
        total_bytes: int,
        *,
        node: str = "",
        now: datetime | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        engine: str = "imap",
    ) -> int:
        """Record the start (or resume) of a copy by `node` with `engine`, claiming its lease; returns the attempt number.

        `AccountBusy` while another node's lease is live at `now` (the caller's clock).
        Under a concurrent write the command reloads, so of two nodes claiming at once
        exactly one wins and the other sees the winner's lease.
        """

        def start(account: AccountMigration) -> int:
            attempt = account.attempts + 1
            account.claim_migration(folders, total_messages, total_bytes, attempt, node, now, lease_seconds, engine)
            return attempt

        return self.update_account(login, start)

    def record_folder_copied(self, login: str, **copied: Unpack[FolderCopiedFields]) -> None:
        """Record a checkpoint; pass `node=` to have a node without the lease refused (`LeaseLost`)."""
        self.update_account(login, lambda a: a.copy_folder(**copied))

    def record_completed(
        self,
        login: str,
        messages: int,
        bytes: int,
        folders: int,
        duration_seconds: float,
        passwords_only: bool,
        *,
        node: str | None = None,
    ) -> None:
        """Record completion; with `node`, refused (`LeaseLost`) unless that node holds the lease."""

        def complete(account: AccountMigration) -> None:
            if node is not None:
                account.check_owner(node)
            account.finish_copy_pass(messages, bytes, folders, duration_seconds, passwords_only)

        self.update_account(login, complete)

    def record_copy_mode(self, login: str, while_copying: str) -> None:
        """Record where the users are served while the copy runs, when due (`AccountMigration.copy_mode_due`)."""

        def choose(account: AccountMigration) -> None:
            if account.copy_mode_due(while_copying):
                account.choose_copy_mode(while_copying)

        self.update_account(login, choose)

    def record_switch_started(self, login: str, *, node: str, now: datetime | None = None,
                              lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        """Claim the switch for `node`; `AccountBusy` while another node's lease is live at `now`."""
        self.update_account(login, lambda a: a.claim_switch(node, now, lease_seconds))

    def record_switched_over(self, login: str, duration_seconds: float, sessions_closed: int,
                             delta_messages: int) -> None:
        self.update_account(login, lambda a: a.record_switch(duration_seconds, sessions_closed, delta_messages))

    def record_failed(self, login: str, reason: str, retryable: bool, *, node: str | None = None) -> None:
        """Record a failure; with `node`, refused (`LeaseLost`) unless that node holds the lease."""

        def fail(account: AccountMigration) -> None:
            if node is not None:
                account.check_owner(node)
            account.fail_migration(reason, retryable)

        self.update_account(login, fail)

    def record_post_script(
        self, login: str, exit_status: int, duration_seconds: float, timed_out: bool
    ) -> None:
        self.update_account(
            login, lambda a: a.record_post_script(exit_status, duration_seconds, timed_out)
        )

    def record_swept(
        self,
        login: str,
        folders: dict[str, int],
        messages: int,
        bytes: int,
        checkpoints: dict[str, CheckpointFields] | None = None,
    ) -> None:
        self.update_account(login, lambda a: a.sweep(folders, messages, bytes, checkpoints or {}))

    def record_filters(self, login: str, report: FilterReport) -> None:
        """Record how the account's Sieve scripts moved: `FiltersNotCopied` when a server offers no ManageSieve."""

        def record(account: AccountMigration) -> None:
            if report.not_offered:
                account.leave_filters(report.not_offered, [_script(r) for r in report.refused])
            else:
                account.copy_filters(report.copied, report.old_active, report.active, report.refused)

        self.update_account(login, record)

    def record_credential_destroyed(self, login: str, reason: str) -> None:
        self.update_account(login, lambda a: a.destroy_credential(reason))

    # Run commands: the console's buttons. Each returns False when the run
    # was already in the asked-for state, so pressing a button twice is harmless.

    def start_run(self, by: str) -> bool:
        return self.update_run(lambda r: _press(r, "started", r.start, by))

    def stop_run(self, by: str) -> bool:
        return self.update_run(lambda r: _press(r, "stopped", r.stop, by))

    def request_finish(self, by: str) -> bool:
        return self.update_run(
            lambda r: _press(r, "finishing", r.request_finish, by)
        )

    def claim_finish(self, node: str) -> bool:
        """Take on the requested finish work as `node`; False when there is none or another took it."""

        def claim(run: MigrationRun) -> bool:
            if run.state != "finishing" or run.finish_claimed_by:
                return False
            run.claim_finish(node)
            return True

        return self.update_run(claim)

    def complete_finish(self, accounts: int, messages: int) -> None:
        self.update_run(lambda r: r.complete_finish(accounts, messages))

    def configure_run(self, settings: Mapping[str, object]) -> bool:
        """Record the effective settings when they differ from the last recorded ones."""

        def configure(run: MigrationRun) -> bool:
            if run.settings == dict(settings):
                return False
            run.configure(dict(settings))
            return True

        return self.update_run(configure)


def _script(refused: RefusedScriptFields) -> ScriptFields:
    return {"name": refused["name"], "bytes": refused["bytes"], "sha256": refused["sha256"]}


def aggregate_event(event: DomainEventProtocol[UUID]) -> Aggregate.Event:
    """`event` as the aggregates' event class it is: every event recorded here is one."""
    if not isinstance(event, Aggregate.Event):
        raise TypeError(f"not an aggregate's event: {type(event).__qualname__}")
    return event


def _press(run: MigrationRun, target: str, command: Callable[[str], None], by: str) -> bool:
    if run.state == target:
        return False
    command(by)
    return True
