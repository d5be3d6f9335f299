"""The old and the new mail server as one account's migration reaches them: who logs in where, and how.

Server failures leave here as the domain's `PasswordRefused` and
`MailServerError` (with whether a retry may help), so the use cases never see
a socket or a protocol library's exception.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from mailmigrator.adapters.imap.recipient_headers import inbox_recipient_headers
from mailmigrator.adapters.imap.source import ImapSource
from mailmigrator.adapters.imap.target import ImapTarget
from mailmigrator.adapters.mail.comparison import MailboxComparison
from mailmigrator.adapters.mail.connection import (
    LoginPlan,
    LoginRefused,
    MailConnectionError,
    ServerAddress,
    describe_error,
    is_transient,
    source_login_name,
)
from mailmigrator.adapters.mail.copier import AccountJob, AccountResult, CopyProgress, MailboxCopier
from mailmigrator.adapters.mail.message_source import MessageSource
from mailmigrator.adapters.pop3.source import Pop3Source
from mailmigrator.domain.credentials import Credentials
from mailmigrator.domain.errors import MailServerError, MigrationRefused, PasswordRefused
from mailmigrator.domain.use_cases.ports import Progress


@dataclass(frozen=True)
class SourceAccess:
    """How to reach the old server: its copying address (POP3 only for a POP3-only source) and its admin login."""

    address: ServerAddress
    protocol: str = "imap"  # imap | pop3 | both
    login_format: str = "as-typed"
    admin: Credentials | None = field(default=None, repr=False)
    admin_login: str = "sasl"


@dataclass(frozen=True)
class TargetAccess:
    """How to reach the new server: its IMAP address and the master user that writes every mailbox."""

    address: ServerAddress
    master: Credentials = field(repr=False)


@contextmanager
def server_errors(what: str = "") -> Iterator[None]:
    """Turn a refused login into `PasswordRefused` and a connection failure into `MailServerError`."""
    prefix = f"{what}: " if what else ""
    try:
        yield
    except LoginRefused as e:
        raise PasswordRefused(f"{prefix}{describe_error(e)}") from None
    except (MailConnectionError, OSError) as e:
        raise MailServerError(f"{prefix}{describe_error(e)}", retryable=is_transient(e)) from None


class MailServers:
    """Logins on the old and the new server for one account at a time (blocking calls)."""

    def __init__(self, source: SourceAccess, target: TargetAccess | None) -> None:
        self.source = source
        self.target = target

    def source_name(self, typed: str, login: str) -> str:
        """The name the old server knows the account by (per `login_format`)."""
        return source_login_name(typed, login, self.source.login_format)

    def user_plan(self, source_name: str, password: str) -> LoginPlan:
        return LoginPlan(source_name, Credentials(source_name, password))

    def copy_plan(self, source_name: str, login: str, password: str | None) -> LoginPlan:
        """How copies log in to the old server: the admin login when configured, else the user's own."""
        if self.source.admin is not None:
            return LoginPlan(source_name, self.source.admin, self.source.admin_login)
        if password is None:
            raise MigrationRefused(f"{login}: the old server needs the user's password (no [source] admin_user)")
        return self.user_plan(source_name, password)

    def target_plan(self, target_login: str) -> LoginPlan:
        """Logging in to the new server as ``user*master_user``."""
        return LoginPlan(target_login, self.require_target().master, "dovecot-master")

    def require_target(self) -> TargetAccess:
        if self.target is None:
            raise MigrationRefused("[target] is missing: name the new server and its master_user")
        return self.target

    def open_source(self, plan: LoginPlan) -> MessageSource:
        if self.source.protocol == "pop3":
            return Pop3Source(self.source.address, plan)
        return ImapSource(self.source.address, plan)

    def open_target(self, plan: LoginPlan) -> ImapTarget:
        return ImapTarget(self.require_target().address, plan)

    def check_password(self, typed: str, login: str, password: str) -> None:
        """Log in to the old server as the user; `PasswordRefused` when the password is wrong."""
        with server_errors():
            self.open_source(self.user_plan(self.source_name(typed, login), password)).close()

    def check_target_account(self, target_login: str) -> None:
        """The account must exist on the new server: the master login for it succeeds."""
        try:
            with server_errors():
                self.open_target(self.target_plan(target_login)).close()
        except PasswordRefused:
            raise MigrationRefused(
                f"{target_login} does not exist on the new server; create it first (no provisioning is plugged in)"
            ) from None

    def recipient_headers(self, source_name: str, login: str, password: str | None) -> list[bytes]:
        """The recipient header blocks of the newest INBOX messages on the old server."""
        with server_errors():
            return inbox_recipient_headers(self.source.address, self.copy_plan(source_name, login, password))

    def differences(self, typed: str, login: str, password: str | None, target_login: str,
                    exclude_folders: tuple[str, ...], *, identity: bool = False) -> list[str]:
        """Differences between the old and the new mailbox of one account, one line each.

        `identity`: the account was copied keeping its UIDs and UIDVALIDITY, so those are compared too.
        """
        old: MessageSource | None = None
        new: ImapSource | None = None
        try:
            with server_errors(login):
                old = self.open_source(self.copy_plan(self.source_name(typed, login), login, password))
                new = ImapSource(self.require_target().address, self.target_plan(target_login))
                return MailboxComparison(old, new, exclude_folders, identity).differences()
        except PasswordRefused as e:
            raise MigrationRefused(str(e)) from None
        except MailServerError as e:
            raise MigrationRefused(f"{e}{' (try again)' if e.retryable else ''}") from None
        finally:
            for connection in (old, new):
                if connection is not None:
                    connection.close()


class AccountCopier:
    """The copy engine for one account, logged in as `MailServers` says."""

    def __init__(self, servers: MailServers, engine: MailboxCopier) -> None:
        self.servers = servers
        self.engine = engine

    def job(self, login: str, source_name: str, password: str | None, target_login: str,
            progress: Progress | None = None) -> AccountJob:
        return AccountJob(login, self.servers.copy_plan(source_name, login, password),
                          self.servers.target_plan(target_login),
                          progress if isinstance(progress, CopyProgress) else None)

    async def copy(self, login: str, source_name: str, password: str | None, target_login: str,
                   progress: Progress | None = None) -> AccountResult:
        return await self.engine.copy_account(self.job(login, source_name, password, target_login, progress))
