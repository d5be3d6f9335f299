"""Migrations in the background of `serve`: each account's migration is a task in one nursery.

A migration that fails in a way worth retrying is tried again under
`MIGRATION_RETRIES`. Credentials are held in memory only while a migration
runs; after a restart the lease take-over and the resume hand them back from
the credential vault (or the source admin login).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import stamina
import structlog
import trio

from mailmigrator.domain.credentials import Credentials
from mailmigrator.domain.errors import ExplainedError, failure_text
from mailmigrator.domain.retries import MIGRATION_RETRIES, RetryPolicy
from mailmigrator.domain.use_cases.migrate_account import MigrateAccount, MigrationOutcome

log = structlog.get_logger("mailmigrator.background")

PRECOPY_POLL_SECONDS = 0.5


class RetryableFailure(ExplainedError):
    """A migration that failed in a way another attempt may cure."""


@dataclass
class MigrationQueue:
    """Runs migrations in the background, at most `concurrency` at a time."""

    migrate: MigrateAccount
    concurrency: int
    retries: RetryPolicy = MIGRATION_RETRIES
    finished: int = 0
    _nursery: trio.Nursery | None = None
    _active: dict[str, Credentials] = field(default_factory=dict)
    _limiter: trio.CapacityLimiter | None = None
    # Accounts are created on the new server up to `concurrency` ahead of the copies.
    _ahead: trio.CapacityLimiter | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery migrations run in; returns only when cancelled."""
        self._limiter = trio.CapacityLimiter(self.concurrency)
        self._ahead = trio.CapacityLimiter(self.concurrency)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def begin(self, login: str, credentials: Credentials) -> bool:
        """Start migrating `login` unless it already is; True when this call started it."""
        if login in self._active or self._nursery is None:
            return False
        self._active[login] = credentials
        self._nursery.start_soon(self._migrate, login, name=f"migrate {login}")
        return True

    def begin_after_precopy(self, login: str, credentials: Credentials) -> bool:
        """Migrate `login` once its running pre-copy pass has ended; True when this call started it."""
        if login in self._active or self._nursery is None:
            return False
        self._active[login] = credentials
        self._nursery.start_soon(self._after_precopy, login, name=f"migrate {login} after its pre-copy")
        return True

    async def _after_precopy(self, login: str) -> None:
        records = self.migrate.records
        try:
            while (await records.account(login)).state == "precopying":
                await trio.sleep(PRECOPY_POLL_SECONDS)
            # The password was verified during the pass; recorded again now, it makes the switch due.
            await records.password_verified(login, "login-during-precopy", self.migrate.settings.while_copying)
        except Exception as e:  # one account's failure must not end the service
            self._active.pop(login, None)
            log.warning("switch after the pre-copy not started", login=login, error=failure_text(e))
            return
        except BaseException:
            self._active.pop(login, None)
            raise
        await self._migrate(login)

    def credentials_for(self, login: str) -> Credentials | None:
        """The credentials a running migration holds, if any."""
        return self._active.get(login)

    def active(self) -> set[str]:
        return set(self._active)

    async def _migrate(self, login: str) -> None:
        try:
            async for attempt in stamina.retry_context(
                on=RetryableFailure, attempts=self.retries.attempts, timeout=self.retries.timeout,
                wait_initial=self.retries.first_wait, wait_max=self.retries.max_wait,
            ):
                with attempt:
                    outcome = await self._attempt(login)
                    if not outcome.ok and outcome.retryable:
                        log.warning("migration failed, will retry", login=login, attempt=attempt.num,
                                    error=outcome.message)
                        raise RetryableFailure(outcome.message)
        except RetryableFailure as e:
            log.error("migration failed, no more retries", login=login, error=str(e))
        finally:
            self._active.pop(login, None)
            self.finished += 1

    async def _attempt(self, login: str) -> MigrationOutcome:
        assert self._limiter is not None and self._ahead is not None
        async with self._ahead:
            failure = await self.migrate.create_ahead(login, self._active[login])
        if failure is not None:
            return failure
        async with self._limiter:
            try:
                outcome = await self.migrate.run(login, self._active[login])
            except Exception as e:  # one account's failure must not end the service
                log.exception("migration crashed", login=login)
                return await self.migrate.failed(login, failure_text(e), False)
        if outcome.busy:
            log.info("account held by another node", login=login, detail=outcome.message)
        elif outcome.ok:
            log.info("migration finished", login=login)
        return outcome
