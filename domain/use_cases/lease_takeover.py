"""Resume what a stopped node left: locked accounts at start, and accounts whose node stopped renewing its lease.

The password comes from the credential vault (or, with a source admin login,
none is needed). One that does not decrypt is recorded once on its account as
a retryable failure and never blocks the others; the user's next login resumes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import structlog

from mailmigrator.domain.credentials import Credentials
from mailmigrator.domain.errors import ExplainedError
from mailmigrator.domain.use_cases.background import MigrationQueue
from mailmigrator.domain.use_cases.ports import CredentialStore, MailServers
from mailmigrator.domain.use_cases.records import MigrationRecords

log = structlog.get_logger("mailmigrator.takeover")

UNREADABLE_CREDENTIAL = ("the stored password does not decrypt with this node's [store] credential_key_file; "
                         "the account resumes at the user's next login")


class LockedAccounts(Protocol):
    """The account projection's answers a take-over needs (`ops.composition.AccountViews`)."""

    def locked(self) -> list[str]: ...

    def expired(self, node: str, now: datetime, lease_seconds: float) -> list[str]: ...


def resume_credentials(servers: MailServers, vault: CredentialStore | None, login: str) -> Credentials | None:
    """What a resume logs in to the old server with: the vault's password, or the admin login (empty password)."""
    name = servers.source_name(login, login)
    if vault is None:
        return Credentials(name, "")
    password = vault.get(login)
    return Credentials(name, password) if password is not None else None


@dataclass
class LeaseTakeover:
    """Begins background migrations of accounts no live node is working on."""

    records: MigrationRecords
    servers: MailServers
    queue: MigrationQueue
    views: LockedAccounts
    vault: CredentialStore | None
    node: str
    lease_seconds: float

    async def resume_locked(self) -> list[str]:
        """At start: begin every locked account whose credentials are at hand; returns those begun."""
        locked = await self.records.in_thread(self.views.locked)
        found = await self.stored_credentials(locked)
        resumed = [login for login, c in found.items() if self.queue.begin(login, c)]
        if locked:
            log.info("locked accounts", count=len(locked), resumed=len(resumed),
                     waiting_for_login=len(locked) - len(resumed))
        return resumed

    async def take_over_expired(self, now: datetime) -> list[str]:
        """Begin accounts whose node stopped renewing its lease (it died): the claim decides who wins."""
        orphans = await self.records.in_thread(lambda: self.views.expired(self.node, now, self.lease_seconds))
        begun = [login for login, c in (await self.stored_credentials(orphans)).items() if self.queue.begin(login, c)]
        for login in begun:
            log.info("taking over an account whose lease expired", login=login, node=self.node)
        return begun

    async def stored_credentials(self, logins: list[str]) -> dict[str, Credentials]:
        """The stored credentials of `logins`; one that does not decrypt is reported on its account, never fatal."""
        found: dict[str, Credentials] = {}
        unreadable: list[str] = []

        def read() -> None:
            for login in logins:
                try:
                    credentials = self.credentials(login)
                except ExplainedError:
                    unreadable.append(login)
                    continue
                if credentials is not None:
                    found[login] = credentials

        await self.records.in_thread(read)
        for login in unreadable:
            await self.report_unreadable(login)
        return found

    def credentials(self, login: str) -> Credentials | None:
        return resume_credentials(self.servers, self.vault, login)

    async def report_unreadable(self, login: str) -> None:
        """A failure the admin sees on the account, recorded once (the scan repeats)."""
        try:
            account = await self.records.account(login)
            if account.last_error == UNREADABLE_CREDENTIAL:
                return
            await self.queue.migrate.failed(login, UNREADABLE_CREDENTIAL, True)
        except Exception as e:  # a store hiccup must not stop the service
            log.warning("cannot record the unreadable credential", login=login, error=type(e).__name__)
            return
        log.error("stored credential does not decrypt", login=login, node=self.node,
                  hint="[store] credential_key_file differs between nodes, or the vault row is damaged")
