"""The event store as the trio use cases call it: each command in a worker thread, a few at a time.

`MigrationService` is blocking (SQLite or PostgreSQL under it); these are its
commands and queries, one async method each, so that a reader and a type
checker can follow every call from a use case to the events it records.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TypeVar

import trio

from mailmigrator.domain.application import MigrationService
from mailmigrator.domain.errors import AccountNotFound
from mailmigrator.domain.filters import FilterReport
from mailmigrator.domain.model import AccountMigration, MigrationRun

T = TypeVar("T")


class MigrationRecords:
    """Async commands and queries over one `MigrationService`."""

    def __init__(self, service: MigrationService, limiter: trio.CapacityLimiter | None = None) -> None:
        self.service = service
        self.limiter = limiter or trio.CapacityLimiter(4)

    async def in_thread(self, work: Callable[[], T]) -> T:
        """Run blocking work (a store query, a vault or provisioning call) under this limiter."""
        return await trio.to_thread.run_sync(work, limiter=self.limiter)

    async def account(self, login: str) -> AccountMigration:
        return await self.in_thread(lambda: self.service.account(login))

    async def account_or_none(self, login: str) -> AccountMigration | None:
        try:
            return await self.account(login)
        except AccountNotFound:
            return None

    async def has_account(self, login: str) -> bool:
        return await self.in_thread(lambda: self.service.has_account(login))

    async def run(self) -> MigrationRun:
        return await self.in_thread(self.service.run)

    async def login_seen(self, login: str, protocol: str, client_address: str, local_address: str) -> None:
        await self.in_thread(lambda: self.service.record_login(login, protocol, client_address, local_address))

    async def password_verified(self, login: str, method: str, while_copying: str = "") -> bool:
        return await self.in_thread(lambda: self.service.record_password_verified(login, method, while_copying))

    async def password_rejected(self, login: str, reason: str) -> None:
        await self.in_thread(lambda: self.service.record_password_rejected(login, reason))

    async def account_created(self, login: str, aliases: list[str], provisioner: str,
                              rejected: Sequence[Mapping[str, str]]) -> None:
        await self.in_thread(lambda: self.service.record_account_created(login, login, aliases, provisioner, rejected))

    async def account_prepared(self, login: str, provisioner: str) -> None:
        await self.in_thread(lambda: self.service.record_account_prepared(login, login, provisioner))

    async def password_set(self, login: str, provisioner: str) -> None:
        await self.in_thread(lambda: self.service.record_password_set(login, provisioner))

    async def passwords_only_completed(self, login: str) -> None:
        await self.in_thread(lambda: self.service.record_completed(login, 0, 0, 0, 0.0, True))

    async def copy_mode_chosen(self, login: str, while_copying: str) -> None:
        await self.in_thread(lambda: self.service.record_copy_mode(login, while_copying))

    async def switch_started(self, login: str, node: str, now: datetime, lease_seconds: float) -> None:
        await self.in_thread(lambda: self.service.record_switch_started(login, node=node, now=now,
                                                                        lease_seconds=lease_seconds))

    async def switched_over(self, login: str, duration_seconds: float, sessions_closed: int,
                            delta_messages: int) -> None:
        await self.in_thread(lambda: self.service.record_switched_over(login, duration_seconds, sessions_closed,
                                                                       delta_messages))

    async def failed(self, login: str, reason: str, retryable: bool) -> bool:
        """Record a failure unless the account's state forbids one now; True when recorded."""

        def record() -> bool:
            if not self.service.account(login).allows("MigrationFailed"):
                return False
            self.service.record_failed(login, reason, retryable)
            return True

        return await self.in_thread(record)

    async def post_script_ran(self, login: str, exit_status: int, duration_seconds: float, timed_out: bool) -> None:
        await self.in_thread(lambda: self.service.record_post_script(login, exit_status, duration_seconds, timed_out))

    async def credential_destroyed(self, login: str, reason: str) -> None:
        await self.in_thread(lambda: self.service.record_credential_destroyed(login, reason))

    async def filters(self, login: str, report: FilterReport) -> None:
        await self.in_thread(lambda: self.service.record_filters(login, report))
