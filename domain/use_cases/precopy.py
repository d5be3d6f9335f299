"""Copy roster accounts' mail ahead of their owners' first login, without their passwords.

The new account is prepared so that no password opens it (`NewAccounts.prepare`); the copy logs in to
the old server with the source admin login and to the new one with the master user. A pass over an
account already pre-copied copies only what arrived since (the checkpoints), so the final delta at the
first login stays small. The copier's lease keeps two copies off one account, whichever node runs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from mailmigrator.domain.errors import ExplainedError, failure_text
from mailmigrator.domain.states import PREPARABLE_STATES, PRECOPYABLE_STATES
from mailmigrator.domain.use_cases.migrate_account import MigrateAccount, MigrationOutcome
from mailmigrator.domain.use_cases.ports import Progress



@dataclass
class PreCopy:
    """Pre-copies accounts `concurrency` at a time; the counters are for a progress display."""

    migrate: MigrateAccount
    concurrency: int
    done: int = 0
    failed: int = 0
    skipped: int = 0
    current: list[str] = field(default_factory=list)
    outcomes: list[MigrationOutcome] = field(default_factory=list)

    async def run(self, logins: Sequence[str], progress: Progress | None = None) -> list[MigrationOutcome]:
        """Pre-copy every login; the outcomes in the logins' order."""
        limiter = trio.CapacityLimiter(self.concurrency)
        ordered: dict[int, MigrationOutcome] = {}

        async def one(index: int, login: str) -> None:
            async with limiter:
                self.current.append(login)
                try:
                    outcome = await self.account(login, progress)
                finally:
                    self.current.remove(login)
            ordered[index] = outcome
            self.outcomes.append(outcome)
            self.done += 1
            self.failed += not outcome.ok
            self.skipped += outcome.already_done

        async with trio.open_nursery() as nursery:
            for index, login in enumerate(logins):
                nursery.start_soon(one, index, login)
        return [ordered[i] for i in range(len(logins))]

    async def account(self, login: str, progress: Progress | None = None) -> MigrationOutcome:
        """One pass over `login`: prepare the new account when it has none, then copy what is not there yet."""
        migrate = self.migrate
        account = await migrate.records.account_or_none(login)
        if account is None or account.state not in PRECOPYABLE_STATES:
            state = account.state if account is not None else "not on the roster"
            return MigrationOutcome(login, True, f"not pre-copied: {state}", already_done=True)
        accounts = migrate.accounts
        if accounts is None:
            return MigrationOutcome(login, False, "pre-copy needs [target] provisioning to prepare the account")
        try:
            if account.state in PREPARABLE_STATES:
                await migrate.records.in_thread(lambda: accounts.prepare(login))
                await migrate.records.account_prepared(login, accounts.name)
                if accounts.settle_seconds > 0:
                    await migrate.wait_until_visible(login, accounts.settle_seconds)
            source = migrate.servers.source_name(login, login)
            result = await migrate.copier.copy(login, source, None, login, progress)
        except (ExplainedError, OSError) as e:
            return MigrationOutcome(login, False, failure_text(e))
        if result.busy:
            return MigrationOutcome(login, False, result.error or "another copy runs on it", result, busy=True)
        if not result.ok:
            return MigrationOutcome(login, False, result.error or "copy failed", result, retryable=True)
        return MigrationOutcome(login, True, f"pre-copied {result.folders} folders, {result.messages:,} messages",
                                result)

