"""The first-login use case, with the real in-memory event store and stand-in servers."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import trio

from mailmigrator.adapters.proxy.backends import BackendRejected, BackendSession, BackendUnavailable
from mailmigrator.domain.application import MigrationService
from mailmigrator.domain.credentials import Credentials
from mailmigrator.domain.use_cases.first_login import (
    AuthenticationFailed,
    FirstLogin,
    LoginSettings,
    MigrationInProgress,
    RunState,
    ServerUnavailable,
)
from mailmigrator.domain.use_cases.migrate_account import MigrateAccount, MigrationSettings
from mailmigrator.domain.use_cases.records import MigrationRecords
from mailmigrator.projections.accounts import event_name


@dataclass
class Servers:
    """Stand-in backends: the old server knows one password per login."""

    old_passwords: dict[str, str]
    old_down: bool = False
    new_down: bool = False
    calls: list[tuple[str, str]] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)

    async def old(self, protocol: str, credentials: Credentials) -> BackendSession:
        self.calls.append(("old", credentials.login))
        self.protocols.append(protocol)
        await trio.sleep(0.01)
        if self.old_down:
            raise BackendUnavailable("down")
        if self.old_passwords.get(credentials.login) != credentials.password:
            raise BackendRejected("no")
        return BackendSession(trio.testing.MemoryReceiveStream() if False else _NullStream())

    async def new(self, protocol: str, credentials: Credentials) -> BackendSession:
        self.calls.append(("new", credentials.login))
        if self.new_down:
            raise BackendUnavailable("down")
        return BackendSession(_NullStream())

    async def notice(self, protocol: str) -> BackendSession:
        self.calls.append(("notice", ""))
        return BackendSession(_NullStream())


class _NullStream(trio.abc.Stream):
    async def send_all(self, data: bytes) -> None: ...
    async def wait_send_all_might_not_block(self) -> None: ...
    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return b""
    async def aclose(self) -> None: ...


@dataclass
class Workers:
    begun: list[str] = field(default_factory=list)
    held: dict[str, Credentials] = field(default_factory=dict)

    def begin(self, login: str, credentials: Credentials) -> bool:
        if login in self.held:
            return False
        self.held[login] = credentials
        self.begun.append(login)
        return True

    def credentials_for(self, login: str) -> Credentials | None:
        return self.held.get(login)


@dataclass
class MemoryProvisioner:
    name: str = "memory"
    settle_seconds: float = 0.0
    accounts: dict[str, str] = field(default_factory=dict)

    def create(self, login: str, password: str) -> None:
        assert login not in self.accounts
        self.accounts[login] = password

    def exists(self, login: str) -> bool:
        return login in self.accounts

    def set_password(self, login: str, password: str) -> None:
        self.accounts[login] = password


class NoMailServers:
    """The old and new mail servers of a passwords-only migration: nothing is copied, nothing asked."""

    def source_name(self, typed: str, login: str) -> str:
        return login


class NoCopier:
    async def copy(self, login: str, source_name: str, password: str | None, target_login: str) -> None:
        raise AssertionError("a passwords-only migration copies nothing")


def router(servers: Servers, *, run: str = "started", **settings: object) -> tuple[FirstLogin, MigrationService, Workers]:
    service = MigrationService()
    workers = Workers()
    # These tests were written for the notice mailbox; the old-server roads have tests of their own.
    defaults: dict[str, object] = {"primary_domain": "example.com", "migration_account": "notice@example.com",
                                   "login_format": "email", "while_copying": "notice"}
    defaults.update(settings)
    login_settings = LoginSettings(**defaults)  # type: ignore[arg-type]
    records = MigrationRecords(service)
    migrate = MigrateAccount(records, NoMailServers(), NoCopier(),  # type: ignore[arg-type]
                             MigrationSettings(passwords_only=login_settings.passwords_only),
                             accounts=MemoryProvisioner())
    r = FirstLogin(records, servers, workers, migrate, login_settings, RunState(run))  # type: ignore[arg-type]
    return r, service, workers


def events(service: MigrationService, login: str) -> list[str]:
    return [event_name(e) for e in service.history(login)]


async def test_right_password_verifies_starts_one_migration_and_lands_on_notice() -> None:
    servers = Servers({"alice@example.com": "pw"})
    r, service, workers = router(servers)
    routed = await r.route("Alice", "pw", "imap", "10.0.0.9", "127.0.0.1")
    assert routed.destination == "notice" and routed.login == "alice@example.com"
    assert events(service, "alice@example.com") == ["Registered", "LoginSeen", "PasswordVerified"]
    assert workers.begun == ["alice@example.com"]


async def test_wrong_password_of_an_unknown_login_is_only_counted() -> None:
    servers = Servers({"alice@example.com": "pw"})
    r, service, workers = router(servers)
    with pytest.raises(AuthenticationFailed):
        await r.route("alice", "nope", "imap", "10.0.0.9", "127.0.0.1")
    assert not service.has_account("alice@example.com")
    assert r.rejections.unrecorded == 1
    assert workers.begun == [] and not r.migrate.accounts.accounts  # type: ignore[union-attr]


async def test_wrong_passwords_of_a_known_account_are_recorded_once_per_interval() -> None:
    servers = Servers({"alice@example.com": "pw"})
    r, service, _ = router(servers, run="stopped")
    await r.route("alice", "pw", "imap", "10.0.0.9", "127.0.0.1")
    r.run_state.state = "started"
    for _ in range(5):
        with pytest.raises(AuthenticationFailed):
            await r.route("alice", "nope", "imap", "10.0.0.9", "127.0.0.1")
    assert events(service, "alice@example.com") == ["Registered", "LoginSeen", "PasswordRejected"]
    assert r.rejections.unrecorded == 4


async def test_stopped_run_passes_through_and_records_login_only() -> None:
    servers = Servers({"alice@example.com": "pw"})
    r, service, workers = router(servers, run="stopped")
    routed = await r.route("alice", "pw", "pop3", "10.0.0.9", "127.0.0.1")
    assert routed.destination == "old"
    assert events(service, "alice@example.com") == ["Registered", "LoginSeen"]
    assert workers.begun == []


async def test_twenty_parallel_logins_start_exactly_one_migration() -> None:
    servers = Servers({"alice@example.com": "pw"})
    r, service, workers = router(servers)
    firsts: list[bool] = []
    original = service.record_password_verified

    def spy(login: str, method: str, while_copying: str = "") -> bool:
        first = original(login, method, while_copying)
        firsts.append(first)
        return first

    service.record_password_verified = spy  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(r.route, "alice", "pw", "imap", "10.0.0.9", "127.0.0.1")
    assert firsts.count(True) == 1
    assert workers.begun == ["alice@example.com"]
    assert service.account("alice@example.com").state == "verified"


async def test_locked_user_without_migration_account_is_refused_after_verification() -> None:
    servers = Servers({"alice@example.com": "pw"})
    r, service, workers = router(servers, migration_account="")
    with pytest.raises(MigrationInProgress):
        await r.route("alice", "pw", "imap", "10.0.0.9", "127.0.0.1")
    assert workers.begun == ["alice@example.com"]


async def test_locked_user_after_restart_is_reverified_and_resumed() -> None:
    servers = Servers({"alice@example.com": "pw"})
    r, service, workers = router(servers)
    await r.route("alice", "pw", "imap", "10.0.0.9", "127.0.0.1")
    workers.held.clear()  # a restart forgets the in-memory credentials
    workers.begun.clear()
    servers.calls.clear()
    routed = await r.route("alice", "pw", "imap", "10.0.0.9", "127.0.0.1")
    assert routed.destination == "notice"
    assert ("old", "alice@example.com") in servers.calls and workers.begun == ["alice@example.com"]


async def test_old_server_down_is_temporary_and_records_nothing_wrong() -> None:
    servers = Servers({"alice@example.com": "pw"}, old_down=True)
    r, service, _ = router(servers)
    with pytest.raises(ServerUnavailable):
        await r.route("alice", "pw", "imap", "10.0.0.9", "127.0.0.1")
    assert not service.has_account("alice@example.com")
    servers.old_down = False
    assert (await r.route("alice", "pw", "imap", "10.0.0.9", "127.0.0.1")).destination == "notice"


async def test_passwords_only_sets_password_and_completes() -> None:
    servers = Servers({"alice@example.com": "pw"})
    r, service, workers = router(servers, passwords_only=True)
    routed = await r.route("alice", "pw", "imap", "10.0.0.9", "127.0.0.1")
    assert routed.destination == "new"
    assert service.account("alice@example.com").state == "completed"
    assert r.migrate.accounts.accounts == {"alice@example.com": "pw"}  # type: ignore[union-attr]
    assert workers.begun == []


async def test_completed_user_goes_to_new_server_and_new_server_down_is_temporary() -> None:
    servers = Servers({"alice@example.com": "pw"})
    r, service, _ = router(servers, passwords_only=True)
    await r.route("alice", "pw", "imap", "10.0.0.9", "127.0.0.1")
    servers.new_down = True
    with pytest.raises(ServerUnavailable):
        await r.route("alice", "pw", "imap", "10.0.0.9", "127.0.0.1")
    assert service.account("alice@example.com").state == "completed"


def test_bare_login_takes_domain_of_local_address() -> None:
    r, _, _ = router(Servers({}), domains={"127.0.0.2": "navi1.com", "127.0.0.3": "navi2.com"})
    assert r.normalise("bob", "127.0.0.2") == "bob@navi1.com"
    assert r.normalise("bob", "127.0.0.3") == "bob@navi2.com"
    assert r.normalise("bob", "127.0.0.1") == "bob@example.com"
    assert r.normalise("bob@other.org", "127.0.0.2") == "bob@other.org"


async def test_the_proxy_answers_each_refusal_with_its_response_code() -> None:
    from mailmigrator.adapters.proxy.protocol_errors import ServerError, UserError
    from mailmigrator.adapters.proxy.listeners import LoginProxy, ProxyLimits
    from mailmigrator.adapters.proxy.throttle import LoginThrottle

    servers = Servers({"alice@example.com": "pw"})
    r, _, _ = router(servers, migration_account="")
    proxy = LoginProxy(r, LoginThrottle(), None, ProxyLimits(failure_delay=0.0), False)
    with pytest.raises(UserError) as wrong:
        await proxy.login("alice", "nope", "imap", "10.0.0.9", "127.0.0.1")
    assert wrong.value.code == "AUTHENTICATIONFAILED" and wrong.value.pop3_code == "AUTH"
    with pytest.raises(ServerError) as moving:
        await proxy.login("alice", "pw", "imap", "10.0.0.9", "127.0.0.1")
    assert moving.value.code == "UNAVAILABLE" and moving.value.pop3_code == "IN-USE"
    servers.old_down = True
    with pytest.raises(ServerError) as down:
        await proxy.login("bob", "pw", "imap", "10.0.0.9", "127.0.0.1")
    assert down.value.code == "UNAVAILABLE" and down.value.pop3_code == "SYS/TEMP"
