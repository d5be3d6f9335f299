"""Background migrations: each account's copy runs as a task in one service nursery.

Each migration is one call of `migrate_account` (the shared migration flow:
provision, copy, complete, post-migrate script). A failure is recorded and
retried with exponential backoff while it is retryable. Credentials are held
in memory only while a migration runs; a `CredentialSource` (the credential
vault, or the source admin login) hands them back after a restart.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog
import trio

from mailmigrator.adapters.mail.credentials import Credentials
from mailmigrator.adapters.proxy.login_routing import StoreCalls
from mailmigrator.adapters.mail.connection import describe_error
from mailmigrator.domain.errors import DomainError, ExplainedError

log = structlog.get_logger("mailmigrator.workers")

MigrateAccount = Callable[[str, Credentials], Awaitable[None]]

RESUMABLE_STATES = ("verified", "created", "copying", "failed")


class CredentialSource(Protocol):
    """Where a restarted service finds a user's credentials to resume a copy."""

    def get(self, login: str) -> Credentials | None: ...


class NoStoredCredentials:
    """Nothing kept: nothing can be resumed without the user logging in again."""

    def get(self, login: str) -> Credentials | None:
        return None


class RetryableFailure(ExplainedError):
    """A failure worth trying again later (the copy engine may raise its own kinds)."""


@dataclass
class MigrationWorkers:
    """Runs migrations in the background, at most `concurrency` at a time."""

    store: StoreCalls
    migrate_account: MigrateAccount
    concurrency: int = 4
    first_backoff: float = 5.0
    max_backoff: float = 600.0
    max_attempts: int = 10
    is_retryable: Callable[[BaseException], bool] = lambda e: not isinstance(e, DomainError) or isinstance(e, RetryableFailure)
    _nursery: trio.Nursery | None = None
    _active: dict[str, Credentials] = field(default_factory=dict)
    _limiter: trio.CapacityLimiter | None = None
    finished: int = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery migrations run in; returns only when cancelled."""
        self._limiter = trio.CapacityLimiter(self.concurrency)
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

    def credentials_for(self, login: str) -> Credentials | None:
        return self._active.get(login)

    def active(self) -> set[str]:
        return set(self._active)

    def resume(self, credentials: CredentialSource, logins: list[str]) -> list[str]:
        """Begin each of `logins` (locked accounts) whose credentials are available; returns those begun."""
        return [login for login in logins if (found := credentials.get(login)) is not None and self.begin(login, found)]

    async def _migrate(self, login: str) -> None:
        assert self._limiter is not None
        try:
            for attempt in range(1, self.max_attempts + 1):
                credentials = self._active[login]
                try:
                    async with self._limiter:
                        await self.migrate_account(login, credentials)
                    log.info("migration finished", login=login)
                    return
                except Exception as e:  # one account's failure must not end the service
                    retryable = self.is_retryable(e)
                    reason = describe_error(e)
                    log.warning("migration failed", login=login, attempt=attempt, error=reason, retryable=retryable)
                    await self._record_failure(login, reason, retryable)
                    if not retryable:
                        return
                await trio.sleep(min(self.max_backoff, self.first_backoff * math.pow(2, attempt - 1)))
        finally:
            self._active.pop(login, None)
            self.finished += 1

    async def _record_failure(self, login: str, reason: str, retryable: bool) -> None:
        def record() -> None:
            account = self.store.service.account(login)
            # The copy engine may already have recorded this failure itself.
            if account.state == "failed" and account.last_error:
                return
            if account.allows("MigrationFailed"):
                self.store.service.record_failed(login, reason[:500], retryable)

        try:
            await self.store(record)
        except DomainError as e:
            log.error("cannot record migration failure", login=login, error=str(e))
