"""Where one login goes: the old server, the new server, or the migration notice.

`LoginRouter.route` normalises the login, consults the account's recorded
state and the run's state, checks the password against the old server when
the account is not migrated yet, records what happened, starts the
migration on a first verified password, and returns a logged-in backend
session for the proxy to relay.
"""

from __future__ import annotations

import functools
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import structlog
import trio

from mailmigrator.adapters.proxy.backends import BackendRejected, BackendSession, BackendUnavailable
from mailmigrator.adapters.mail.credentials import Credentials
from mailmigrator.adapters.mail.connection import describe_error
from mailmigrator.adapters.proxy.protocol_errors import (
    ServerError,
    UserError,
    authentication_failed,
    migration_in_progress,
)
from mailmigrator.adapters.accounts.provisioning import Provisioner
from mailmigrator.domain.application import MigrationService
from mailmigrator.domain.errors import AccountNotFound, DomainError, InvalidLogin
from mailmigrator.domain.logins import local_part, normalise_login

log = structlog.get_logger("mailmigrator.routing")

T = TypeVar("T")
Protocol_ = Literal["imap", "pop3"]
Destination = Literal["old", "new", "notice"]

SETTLED_STATES = frozenset({"completed", "swept"})
# A known account's rejected passwords are kept as events at most once per this many seconds per node.
REJECTION_EVENT_INTERVAL = 3600.0


class Backends(Protocol):
    """Opens logged-in sessions on the two servers."""

    async def old(self, protocol: Protocol_, credentials: Credentials) -> BackendSession:
        """Log in to the old server as the user."""
        ...

    async def new(self, protocol: Protocol_, credentials: Credentials) -> BackendSession:
        """Log in to the new server as the user, with the user's own password."""
        ...

    async def notice(self, protocol: Protocol_) -> BackendSession:
        """Log in to the migration account on the new server (through the master user)."""
        ...


class Migrations(Protocol):
    """The background migration workers, as the router sees them."""

    def begin(self, login: str, credentials: Credentials) -> bool:
        """Start migrating `login` unless it already is; True when this call started it."""
        ...

    def credentials_for(self, login: str) -> Credentials | None:
        """The credentials an active migration holds, if any."""
        ...


class StoreCalls:
    """Runs the (blocking) service methods in worker threads, a few at a time."""

    def __init__(self, service: MigrationService, limiter: trio.CapacityLimiter | None = None) -> None:
        self.service = service
        self.limiter = limiter or trio.CapacityLimiter(4)

    async def __call__(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(functools.partial(method, *args, **kwargs), limiter=self.limiter)


@dataclass(frozen=True)
class RoutingSettings:
    """The parts of the configuration routing needs."""

    primary_domain: str = ""
    domains: dict[str, str] = field(default_factory=dict)
    passwords_only: bool = False
    migration_account: str = ""
    source_protocol: str = "imap"  # imap | pop3 | both
    login_format: str = "as-typed"  # as-typed | email | local-part


@dataclass
class Routed:
    """A login that succeeded: where it went, and the open backend session."""

    login: str
    destination: Destination
    session: BackendSession


@dataclass
class RejectionCounts:
    """Rejected passwords that were not kept as events (unknown logins, or inside the rate bound)."""

    unrecorded: int = 0
    interval_seconds: float = REJECTION_EVENT_INTERVAL
    clock: Callable[[], float] = time.monotonic
    _last_recorded: dict[str, float] = field(default_factory=dict)

    def may_record(self, login: str) -> bool:
        """Whether a rejection of the known account `login` is due to be kept as an event; counts it otherwise."""
        now = self.clock()
        last = self._last_recorded.get(login)
        if last is not None and now - last < self.interval_seconds:
            self.unrecorded += 1
            return False
        if len(self._last_recorded) >= 100_000:
            self._last_recorded = {k: t for k, t in self._last_recorded.items() if now - t < self.interval_seconds}
        self._last_recorded[login] = now
        return True


@dataclass
class LoginRouter:
    """Decides and performs the backend login for one client login."""

    store: StoreCalls
    backends: Backends
    migrations: Migrations
    settings: RoutingSettings
    run_state: Callable[[], str]
    provisioner: Provisioner | None = None
    # Called with (login, password) after a completed, not yet swept account
    # logs in to the new server: the finish sweep may need that password.
    remember_credentials: Callable[[str, str], Awaitable[None]] | None = None
    # passwords_only: the shared migration flow (provisioning, vault, post-migrate script),
    # run right at the login; without it only the password is set.
    migrate_now: Callable[[str, Credentials], Awaitable[Any]] | None = None
    rejections: RejectionCounts = field(default_factory=RejectionCounts)
    _settled: set[str] = field(default_factory=set)
    _password_locks: dict[str, trio.Lock] = field(default_factory=dict)

    def normalise(self, raw_login: str, local_address: str) -> str:
        """The canonical login; the domain of a bare name comes from the local address, else primary_domain."""
        domain = self.settings.domains.get(local_address, self.settings.primary_domain)
        try:
            return normalise_login(raw_login, domain)
        except InvalidLogin:
            raise authentication_failed() from None

    def throttle_keys(self, raw_login: str, local_address: str) -> tuple[str, ...]:
        """Every name one attempt counts against: the normalised login and the name the old server is shown."""
        try:
            login = self.normalise(raw_login, local_address)
        except UserError:
            return ("invalid:" + raw_login.strip().lower()[:256],)
        # Folded: servers commonly treat user names without regard to case.
        return ("login:" + login, "old:" + self._source_name(login, raw_login).strip().casefold()[:256])

    async def route(
        self,
        raw_login: str,
        password: str,
        protocol: Protocol_,
        client_address: str,
        local_address: str,
    ) -> Routed:
        """Log the client in somewhere, or raise `UserError` / `ServerError`."""
        login = self.normalise(raw_login, local_address)
        user = Credentials(login, password)
        if login in self._settled:
            return await self._to_new(login, user, protocol)
        account = await self._account(login)
        state = account.state if account is not None else "new"
        if state in SETTLED_STATES:
            routed = await self._to_new(login, user, protocol, account.target_login)
            self._settled.add(login)
            if state == "completed" and self.remember_credentials is not None:
                # The new server just accepted this password; the old one is checked by the sweep itself.
                try:
                    await self.remember_credentials(login, password)
                except Exception as e:  # keeping it is a convenience; the login has succeeded
                    log.warning("cannot keep the credential for the finish sweep", login=login, error=describe_error(e))
            return routed
        if self.run_state() == "stopped" and state in ("new", "seen"):
            routed = await self._pass_through(login, raw_login, password, protocol)
            await self.store(self.store.service.record_login, login, protocol, client_address, local_address)
            return routed
        if state not in ("new", "seen"):
            held = self.migrations.credentials_for(login)
            if held is not None and hmac.compare_digest(held.password.encode(), password.encode()):
                return await self._to_notice(login, protocol)
        await self._verify(login, raw_login, password, protocol, known=account is not None)
        if state in ("new", "seen"):
            await self.store(self.store.service.record_login, login, protocol, client_address, local_address)
        first = await self.store(self.store.service.record_password_verified, login, f"{self._check_protocol(protocol)}-login")
        if self.settings.passwords_only:
            await self._migrate_password(login, Credentials(self._source_name(login, raw_login), password))
            return await self._to_new(login, user, protocol)
        if first:
            log.info("migration triggered", login=login)
        self.migrations.begin(login, Credentials(self._source_name(login, raw_login), password))
        return await self._to_notice(login, protocol)

    async def _account(self, login: str) -> Any:
        try:
            return await self.store(self.store.service.account, login)
        except AccountNotFound:
            return None

    def _check_protocol(self, protocol: Protocol_) -> Protocol_:
        if self.settings.source_protocol == "both":
            return protocol
        return "pop3" if self.settings.source_protocol == "pop3" else "imap"

    def _source_name(self, login: str, raw_login: str) -> str:
        if self.settings.login_format == "email":
            return login
        if self.settings.login_format == "local-part":
            return local_part(login)
        return raw_login

    async def _verify(self, login: str, raw_login: str, password: str, protocol: Protocol_, *, known: bool) -> None:
        """Check the password on the old server; only a known account's rejection may become an event."""
        check = Credentials(self._source_name(login, raw_login), password)
        try:
            session = await self.backends.old(self._check_protocol(protocol), check)
        except BackendRejected:
            if known and self.rejections.may_record(login):
                await self.store(self.store.service.record_password_rejected, login, "old server refused the password")
            elif not known:
                self.rejections.unrecorded += 1
            raise authentication_failed() from None
        except BackendUnavailable as e:
            log.warning("old server unavailable", login=login, error=str(e))
            raise ServerError("The old mail server is unavailable, try again later.") from None
        await session.aclose()

    async def _pass_through(self, login: str, raw_login: str, password: str, protocol: Protocol_) -> Routed:
        check = Credentials(self._source_name(login, raw_login), password)
        try:
            session = await self.backends.old(protocol, check)
        except BackendRejected:
            self.rejections.unrecorded += 1
            raise authentication_failed() from None
        except BackendUnavailable as e:
            log.warning("old server unavailable", login=login, error=str(e))
            raise ServerError("The mail server is unavailable, try again later.") from None
        return Routed(login, "old", session)

    async def _to_new(
        self, login: str, user: Credentials, protocol: Protocol_, target_login: str | None = None
    ) -> Routed:
        credentials = Credentials(target_login or login, user.password)
        try:
            session = await self.backends.new(protocol, credentials)
        except BackendRejected:
            raise authentication_failed() from None
        except BackendUnavailable as e:
            log.warning("new server unavailable", login=login, error=str(e))
            raise ServerError("The mail server is unavailable, try again later.") from None
        return Routed(login, "new", session)

    async def _to_notice(self, login: str, protocol: Protocol_) -> Routed:
        if not self.settings.migration_account:
            raise migration_in_progress()
        try:
            session = await self.backends.notice(protocol)
        except (BackendRejected, BackendUnavailable) as e:
            log.warning("migration account unavailable", login=login, error=str(e))
            raise migration_in_progress() from None
        return Routed(login, "notice", session)

    async def _migrate_password(self, login: str, credentials: Credentials) -> None:
        """passwords_only: the same password on the new account, created when missing; then complete."""
        if self.provisioner is None:
            raise ServerError("No provisioning is configured for the new server.")
        provisioner = self.provisioner
        password = credentials.password
        lock = self._password_locks.setdefault(login, trio.Lock())
        async with lock:
            account = await self.store(self.store.service.account, login)
            if account.state in SETTLED_STATES:
                return
            if self.migrate_now is not None:
                outcome = await self.migrate_now(login, credentials)
                if not outcome.ok:
                    log.error("password migration failed", login=login, error=outcome.message)
                    raise ServerError("The new mail server cannot take the account now, try again later.")
                self._password_locks.pop(login, None)
                self._settled.add(login)
                return
            try:
                if await self.store(provisioner.exists, login):
                    await self.store(provisioner.set_password, login, password)
                else:
                    await self.store(provisioner.create, login, password)
                if not account.created:
                    await self.store(
                        self.store.service.record_account_created, login, login, [], provisioner.name
                    )
                await self.store(self.store.service.record_completed, login, 0, 0, 0, 0.0, True)
                await trio.sleep(provisioner.settle_seconds)
            except DomainError as e:
                log.error("password migration failed", login=login, error=str(e))
                raise ServerError("The new mail server cannot take the account now, try again later.") from None
        self._password_locks.pop(login, None)
        self._settled.add(login)
