"""A user logs in through the proxy: decide where the login goes, check the password, record it, start the move.

`FirstLogin.route` normalises the login, reads the account's recorded state
and the run's state, lets `domain.routing` pick the road, checks the password
against the old server when the account is not migrated yet, records what
happened, starts the background migration on a verified password, and returns
the logged-in backend session the proxy relays to.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import structlog
import trio

from mailmigrator.domain.credentials import Credentials
from mailmigrator.domain.errors import ExplainedError, InvalidLogin
from mailmigrator.domain.logins import local_part, normalise_login
from mailmigrator.domain.model import AccountMigration
from mailmigrator.domain.routing import (
    MailProtocol,
    after_verification,
    first_road,
    password_check_protocol,
)
from mailmigrator.domain.states import DEFAULT_WHILE_COPYING, SETTLED_STATES, UNVERIFIED_STATES
from mailmigrator.domain.use_cases.background import MigrationQueue
from mailmigrator.domain.use_cases.migrate_account import MigrateAccount
from mailmigrator.domain.use_cases.ports import BackendDown, BackendRefused, Backends, CredentialStore, Session
from mailmigrator.domain.use_cases.records import MigrationRecords

log = structlog.get_logger("mailmigrator.routing")

# A known account's rejected passwords are kept as events at most once per this many seconds per node.
REJECTION_EVENT_INTERVAL = 3600.0
# A login during an account's switch waits this long for it to end (the final delta takes seconds).
SWITCH_WAIT_SECONDS = 5.0
SWITCH_POLL_SECONDS = 0.2
# A pre-copied account's first login waits this long for the final delta and the switch.
PRECOPY_SWITCH_WAIT_SECONDS = 30.0
PRECOPIED_STATES = frozenset({"precopied", "precopying"})
MAX_REMEMBERED_REJECTIONS = 100_000


class AuthenticationFailed(ExplainedError):
    """Wrong login or password (the client is told no more than that)."""

    def __init__(self) -> None:
        super().__init__("Authentication failed.")


class ServerUnavailable(ExplainedError):
    """A backend cannot answer now; the client may try again later."""


class MigrationInProgress(ExplainedError):
    """The user's mail is being moved and there is no notice mailbox to show meanwhile."""

    def __init__(self) -> None:
        super().__init__("Migration in progress, try again later")


class SwitchInProgress(ExplainedError):
    """The account is switching to the new server and the switch did not end while the login waited."""

    def __init__(self) -> None:
        super().__init__("Your mailbox is moving to the new server, try again in a moment")


@dataclass
class RunState:
    """The run's state as this node last read it from the store."""

    state: str = "stopped"


@dataclass(frozen=True)
class LoginSettings:
    """The parts of the configuration a login's route needs."""

    primary_domain: str = ""
    domains: dict[str, str] = field(default_factory=dict)
    passwords_only: bool = False
    migration_account: str = ""
    source_protocol: str = "imap"  # imap | pop3 | both
    login_format: str = "as-typed"  # as-typed | email | local-part
    while_copying: str = DEFAULT_WHILE_COPYING  # old-server | notice | refuse
    switch_wait_seconds: float = SWITCH_WAIT_SECONDS
    precopy_switch_wait_seconds: float = PRECOPY_SWITCH_WAIT_SECONDS


SessionT = TypeVar("SessionT", bound=Session)


@dataclass
class Routed(Generic[SessionT]):
    """A login that succeeded: where it went, and the open backend session."""

    login: str
    destination: str  # old | new | notice
    session: SessionT


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
        if len(self._last_recorded) >= MAX_REMEMBERED_REJECTIONS:
            self._last_recorded = {k: t for k, t in self._last_recorded.items() if now - t < self.interval_seconds}
        self._last_recorded[login] = now
        return True


@dataclass
class FirstLogin(Generic[SessionT]):
    """Decides and performs the backend login for one client login."""

    records: MigrationRecords
    backends: Backends[SessionT]
    queue: MigrationQueue
    migrate: MigrateAccount
    settings: LoginSettings
    run_state: RunState
    vault: CredentialStore | None = None
    rejections: RejectionCounts = field(default_factory=RejectionCounts)
    _settled: set[str] = field(default_factory=set)
    _password_locks: dict[str, trio.Lock] = field(default_factory=dict)

    def normalise(self, raw_login: str, local_address: str) -> str:
        """The canonical login; the domain of a bare name comes from the local address, else primary_domain."""
        domain = self.settings.domains.get(local_address, self.settings.primary_domain)
        try:
            return normalise_login(raw_login, domain)
        except InvalidLogin:
            raise AuthenticationFailed() from None

    def throttle_keys(self, raw_login: str, local_address: str) -> tuple[str, ...]:
        """Every name one attempt counts against: the normalised login and the name the old server is shown."""
        try:
            login = self.normalise(raw_login, local_address)
        except AuthenticationFailed:
            return ("invalid:" + raw_login.strip().lower()[:256],)
        # Folded: servers commonly treat user names without regard to case.
        return ("login:" + login, "old:" + self.source_name(login, raw_login).strip().casefold()[:256])

    async def route(self, raw_login: str, password: str, protocol: MailProtocol, client_address: str,
                    local_address: str) -> Routed[SessionT]:
        """Log the client in somewhere, or raise `AuthenticationFailed`, `ServerUnavailable`, `MigrationInProgress`,
        `SwitchInProgress`."""
        login = self.normalise(raw_login, local_address)
        user = Credentials(login, password)
        if login in self._settled:
            return await self.to_new(login, user, protocol)
        account = await self.records.account_or_none(login)
        held = self.queue.credentials_for(login)
        road = first_road(account.state if account else None, self.run_state.state,
                          holds_same_password=held is not None
                          and hmac.compare_digest(held.password.encode(), password.encode()),
                          while_copying=self.settings.while_copying)
        if road == "new":
            assert account is not None
            return await self.to_settled(login, user, protocol, account)
        if road == "wait":
            await self.wait_for_switch(login)
            return await self.route(raw_login, password, protocol, client_address, local_address)
        if road == "old":
            routed = await self.pass_through(login, raw_login, password, protocol)
            if account is None or account.state in UNVERIFIED_STATES:
                await self.records.login_seen(login, protocol, client_address, local_address)
            return routed
        if road == "notice":
            return await self.to_notice(login, protocol)
        if road == "refuse":
            raise MigrationInProgress()
        return await self.verify_and_migrate(login, raw_login, password, protocol, account,
                                             (client_address, local_address))

    async def wait_for_switch(self, login: str) -> None:
        """Wait while the account switches to the new server; `SwitchInProgress` when it takes too long."""
        with trio.move_on_after(self.settings.switch_wait_seconds):
            while True:
                await trio.sleep(SWITCH_POLL_SECONDS)
                account = await self.records.account_or_none(login)
                if account is None or account.state != "switching":
                    return
        raise SwitchInProgress()

    async def wait_for_completion(self, login: str) -> bool:
        """Wait, at most `precopy_switch_wait_seconds`, for a pre-copied account's switch to complete."""
        with trio.move_on_after(self.settings.precopy_switch_wait_seconds):
            while True:
                account = await self.records.account_or_none(login)
                if account is not None and account.state in SETTLED_STATES:
                    return True
                if account is not None and account.state == "failed":
                    return False
                await trio.sleep(SWITCH_POLL_SECONDS)
        return False

    async def verify_and_migrate(self, login: str, raw_login: str, password: str, protocol: MailProtocol,
                                 account: AccountMigration | None, addresses: tuple[str, str]) -> Routed[SessionT]:
        """Check the password on the old server, record it, and migrate: in the background, or at once."""
        checked_over = password_check_protocol(protocol, self.settings.source_protocol)
        landing = after_verification(passwords_only=self.settings.passwords_only,
                                     has_notice_account=bool(self.settings.migration_account),
                                     while_copying=self.settings.while_copying)
        # Landing on the old server: the session that checked the password is relayed when it speaks
        # the client's protocol.
        session = await self.verify(login, raw_login, password, protocol, known=account is not None,
                                    keep=landing == "old" and checked_over == protocol)
        try:
            if account is None or account.state in UNVERIFIED_STATES:
                await self.records.login_seen(login, protocol, *addresses)
            first = await self.records.password_verified(login, f"{checked_over}-login", self.settings.while_copying)
        except BaseException:
            if session is not None:
                with trio.CancelScope(shield=True):
                    await session.aclose()
            raise
        credentials = Credentials(self.source_name(login, raw_login), password)
        precopied = account.state if account is not None and account.state in PRECOPIED_STATES else None
        if precopied == "precopying":
            # A pre-copy pass holds the account: the switch follows it; the old server serves the user meanwhile.
            self.queue.begin_after_precopy(login, credentials)
            return await self.pass_through(login, raw_login, password, protocol)
        if precopied == "precopied" and landing != "new":
            # Only the short final delta is left: wait for the switch rather than showing the notice.
            self.queue.begin(login, credentials)
            if await self.wait_for_completion(login):
                await self.migrate.password_readable(login)
                return await self.to_new(login, Credentials(login, password), protocol)
        if landing == "new":
            await self.migrate_password(login, credentials)
            return await self.to_new(login, Credentials(login, password), protocol)
        if first:
            log.info("migration triggered", login=login)
        self.queue.begin(login, credentials)
        if session is not None:
            return Routed(login, "old", session)
        if landing == "old":
            return await self.pass_through(login, raw_login, password, protocol)
        if landing == "refuse":
            raise MigrationInProgress()
        return await self.to_notice(login, protocol)

    async def to_settled(self, login: str, user: Credentials, protocol: MailProtocol,
                         account: AccountMigration) -> Routed[SessionT]:
        """A migrated account: the new server checks the password; keep it for the finish sweep when still needed."""
        routed = await self.to_new(login, user, protocol, account.target_login)
        self._settled.add(login)
        if account.state == "completed" and self.vault is not None:
            try:
                await self.remember(login, user.password)
            except Exception as e:  # keeping it is a convenience; the login has succeeded
                log.warning("cannot keep the credential for the finish sweep", login=login, error=type(e).__name__)
        return routed

    async def remember(self, login: str, password: str) -> None:
        """Keep the password of a completed, not yet swept account, so that `finish` can sweep it."""
        vault = self.vault
        assert vault is not None

        def put() -> None:
            try:
                kept = vault.get(login)
            except ExplainedError:  # damaged or sealed with another key: the verified password replaces it
                kept = None
            if kept is None:
                vault.put(login, password)
                log.info("credential kept for the finish sweep", login=login)

        await self.records.in_thread(put)

    def source_name(self, login: str, raw_login: str) -> str:
        if self.settings.login_format == "email":
            return login
        if self.settings.login_format == "local-part":
            return local_part(login)
        return raw_login

    async def verify(self, login: str, raw_login: str, password: str, protocol: MailProtocol, *, known: bool,
                     keep: bool = False) -> SessionT | None:
        """Check the password on the old server; only a known account's rejection may become an event.

        With `keep` the logged-in session is returned for the proxy to relay, else closed.
        """
        check = Credentials(self.source_name(login, raw_login), password)
        try:
            session = await self.backends.old(password_check_protocol(protocol, self.settings.source_protocol), check)
        except BackendRefused:
            if known and self.rejections.may_record(login):
                await self.records.password_rejected(login, "old server refused the password")
            elif not known:
                self.rejections.unrecorded += 1
            raise AuthenticationFailed() from None
        except BackendDown as e:
            log.warning("old server unavailable", login=login, error=str(e))
            raise ServerUnavailable("The old mail server is unavailable, try again later.") from None
        if keep:
            return session
        await session.aclose()
        return None

    async def pass_through(self, login: str, raw_login: str, password: str, protocol: MailProtocol) -> Routed[SessionT]:
        check = Credentials(self.source_name(login, raw_login), password)
        try:
            session = await self.backends.old(protocol, check)
        except BackendRefused:
            self.rejections.unrecorded += 1
            raise AuthenticationFailed() from None
        except BackendDown as e:
            log.warning("old server unavailable", login=login, error=str(e))
            raise ServerUnavailable("The mail server is unavailable, try again later.") from None
        return Routed(login, "old", session)

    async def to_new(self, login: str, user: Credentials, protocol: MailProtocol,
                     target_login: str | None = None) -> Routed[SessionT]:
        try:
            session = await self.backends.new(protocol, Credentials(target_login or login, user.password))
        except BackendRefused:
            raise AuthenticationFailed() from None
        except BackendDown as e:
            log.warning("new server unavailable", login=login, error=str(e))
            raise ServerUnavailable("The mail server is unavailable, try again later.") from None
        return Routed(login, "new", session)

    async def to_notice(self, login: str, protocol: MailProtocol) -> Routed[SessionT]:
        if not self.settings.migration_account:
            raise MigrationInProgress()
        try:
            session = await self.backends.notice(protocol)
        except (BackendRefused, BackendDown) as e:
            log.warning("migration account unavailable", login=login, error=str(e))
            raise MigrationInProgress() from None
        return Routed(login, "notice", session)

    async def migrate_password(self, login: str, credentials: Credentials) -> None:
        """passwords_only: the shared migration (provisioning, vault, post-migrate script) right at the login."""
        async with self._password_locks.setdefault(login, trio.Lock()):
            account = await self.records.account(login)
            if account.state in SETTLED_STATES:
                return
            outcome = await self.migrate.run(login, credentials)
            if not outcome.ok:
                log.error("password migration failed", login=login, error=outcome.message)
                raise ServerUnavailable("The new mail server cannot take the account now, try again later.")
        self._password_locks.pop(login, None)
        self._settled.add(login)

