"""The users' side of `while_copying` and the switch, with the real in-memory event store and stand-ins."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from mailmigrator.adapters.proxy.open_relays import OpenRelays
from mailmigrator.adapters.proxy.relay import relay_pop3_until_moved
from mailmigrator.adapters.proxy.backends import BackendSession
from mailmigrator.domain.application import MigrationService
from mailmigrator.domain.credentials import Credentials
from mailmigrator.domain.use_cases.first_login import MigrationInProgress, SwitchInProgress
from mailmigrator.domain.use_cases.migrate_account import MigrateAccount, MigrationSettings
from mailmigrator.domain.use_cases.records import MigrationRecords
from mailmigrator.domain.use_cases.switch_over import SwitchOver, close_moved_sessions
from mailmigrator.projections.accounts import event_name
from test_first_login import MemoryProvisioner, Servers, router


def events(service: MigrationService, login: str) -> list[str]:
    return [event_name(e) for e in service.history(login)]


async def test_old_server_mode_relays_the_verifying_session_and_starts_the_copy() -> None:
    servers = Servers({"alice@example.com": "pw"})
    r, service, workers = router(servers, while_copying="old-server")
    routed = await r.route("alice", "pw", "imap", "10.0.0.9", "127.0.0.1")
    assert routed.destination == "old"
    assert servers.calls == [("old", "alice@example.com")], "one login on the old server, relayed"
    assert events(service, "alice@example.com") == ["Registered", "LoginSeen", "CopyModeChosen", "PasswordVerified"]
    assert workers.begun == ["alice@example.com"]
    assert not service.account("alice@example.com").locked
    # While the copy runs with this password, later logins go straight through to the old server.
    again = await r.route("alice", "pw", "imap", "10.0.0.9", "127.0.0.1")
    assert again.destination == "old"
    assert events(service, "alice@example.com")[-1] == "PasswordVerified", "nothing more recorded"


async def test_old_server_mode_relays_a_client_in_its_own_protocol_when_the_password_is_checked_in_another() -> None:
    servers = Servers({"alice@example.com": "pw"})
    r, _, _ = router(servers, while_copying="old-server", source_protocol="imap")
    routed = await r.route("alice", "pw", "pop3", "10.0.0.9", "127.0.0.1")
    assert routed.destination == "old"
    assert servers.calls == [("old", "alice@example.com"), ("old", "alice@example.com")]
    assert servers.protocols == ["imap", "pop3"]


async def test_refuse_mode_refuses_every_login_during_the_copy() -> None:
    servers = Servers({"alice@example.com": "pw"})
    r, _, workers = router(servers, while_copying="refuse")
    for _ in range(2):
        with pytest.raises(MigrationInProgress):
            await r.route("alice", "pw", "imap", "10.0.0.9", "127.0.0.1")
    assert workers.begun == ["alice@example.com"]


def switching_account(service: MigrationService, login: str) -> None:
    service.record_password_verified(login, "imap-login", "old-server")
    service.record_account_created(login, login, [], "memory", [])
    service.record_migration_started(login, [{"source": "INBOX"}], 1, 10, node="n")
    service.record_completed(login, 1, 10, 1, 0.1, False, node="n")
    service.record_switch_started(login, node="n")


async def test_a_login_during_the_switch_waits_for_it_and_then_lands_on_the_new_server() -> None:
    servers = Servers({"alice@example.com": "pw"})
    r, service, _ = router(servers, while_copying="old-server")
    switching_account(service, "alice@example.com")

    async def finish_the_switch() -> None:
        await trio.sleep(0.5)
        service.record_completed("alice@example.com", 1, 10, 1, 0.1, False, node="n")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(finish_the_switch)
        routed = await r.route("alice", "pw", "imap", "10.0.0.9", "127.0.0.1")
    assert routed.destination == "new"
    assert servers.calls == [("new", "alice@example.com")]


async def test_a_login_during_a_long_switch_is_told_to_try_again_in_a_moment() -> None:
    servers = Servers({"alice@example.com": "pw"})
    r, service, _ = router(servers, while_copying="old-server", switch_wait_seconds=0.5)
    switching_account(service, "alice@example.com")
    with pytest.raises(SwitchInProgress, match="try again in a moment"):
        await r.route("alice", "pw", "imap", "10.0.0.9", "127.0.0.1")
    assert servers.calls == []


@dataclass
class Result:
    login: str
    ok: bool = True
    messages: int = 0
    bytes: int = 0
    skipped: int = 0
    folders: int = 1
    error: str | None = None
    busy: bool = False


@dataclass
class RecordingCopier:
    """A copy engine that records as the real ones do: start, one checkpoint, completion."""

    service: MigrationService
    new_messages: list[int]
    passes: list[str] = field(default_factory=list)
    copied: int = 0

    async def copy(self, login: str, source_name: str, password: str | None, target_login: str,
                   progress: object = None) -> Result:
        self.passes.append(self.service.account(login).state)
        count = self.new_messages.pop(0)
        self.service.record_migration_started(login, [{"source": "INBOX"}], self.copied + count, 0, node="n")
        account = self.service.account(login)
        self.service.record_folder_copied(
            login, source_folder="INBOX", target_folder="INBOX", uidvalidity=7, highest_uid=self.copied + count,
            messages=count, bytes=0, skipped=[], done=True, target_uidvalidity=9, target_uidnext=1, last_uidl="",
            node=account.node)
        self.copied += count
        self.service.record_completed(login, self.copied, 0, 1, 0.1, False, node="n")
        return Result(login, messages=self.copied)


@dataclass
class Sessions:
    open: dict[str, int]
    closed_when: list[str] = field(default_factory=list)
    service: MigrationService | None = None

    async def close_old_sessions(self, login: str) -> int:
        assert self.service is not None
        self.closed_when.append(self.service.account(login).state)
        return self.open.pop(login, 0)

    def open_logins(self) -> list[str]:
        return sorted(self.open)


def migration(service: MigrationService, copier: RecordingCopier, sessions: Sessions) -> MigrateAccount:
    records = MigrationRecords(service)
    return MigrateAccount(records, None, copier, MigrationSettings(while_copying="old-server"),  # type: ignore[arg-type]
                          accounts=MemoryProvisioner(), switch=SwitchOver(records, copier, sessions, node="n"))


async def test_the_first_pass_catches_up_then_the_switch_closes_sessions_and_copies_the_delta() -> None:
    service = MigrationService()
    login = "bob@example.com"
    service.record_password_verified(login, "imap-login", "old-server")
    copier = RecordingCopier(service, [5, 2])
    sessions = Sessions({login: 2}, service=service)
    outcome = await migration(service, copier, sessions).run(login, Credentials(login, "pw"))
    assert outcome.ok, outcome.message
    assert copier.passes == ["created", "switching"]
    assert sessions.closed_when == ["switching"], "sessions are closed once the account is locked for the switch"
    names = events(service, login)
    assert names[-9:] == ["AccountCreated", "MigrationStarted", "FolderCopied", "CopyCaughtUp", "SwitchStarted",
                          "MigrationStarted", "FolderCopied", "MigrationCompleted", "SwitchedOver"]
    switched = service.history(login)[-1]
    assert (switched.sessions_closed, switched.delta_messages) == (2, 2)  # type: ignore[attr-defined]
    assert service.account(login).state == "completed"


async def test_an_interrupted_switch_is_resumed_and_finished() -> None:
    service = MigrationService()
    login = "carol@example.com"
    service.record_password_verified(login, "imap-login", "old-server")
    switching_account(service, login)
    copier = RecordingCopier(service, [3])
    outcome = await migration(service, copier, Sessions({}, service=service)).run(login, Credentials(login, "pw"))
    assert outcome.ok and copier.passes == ["switching"]
    assert events(service, login)[-5:] == ["SwitchStarted", "MigrationStarted", "FolderCopied", "MigrationCompleted",
                                           "SwitchedOver"]


async def test_a_node_closes_its_relays_of_accounts_another_node_switched() -> None:
    service = MigrationService()
    switching_account(service, "moved@example.com")
    service.record_password_verified("copying@example.com", "imap-login", "old-server")
    sessions = Sessions({"moved@example.com": 1, "copying@example.com": 1, "unknown@example.com": 1},
                        service=service)
    assert await close_moved_sessions(MigrationRecords(service), sessions) == 1
    assert sessions.open_logins() == ["copying@example.com", "unknown@example.com"]


class _Pipe(trio.abc.Stream):
    """One side of a relayed connection: what is sent is kept, what is received is scripted."""

    def __init__(self, incoming: list[bytes]) -> None:
        self.incoming = incoming
        self.sent = bytearray()
        self.more = trio.Event()

    async def send_all(self, data: bytes) -> None:
        self.sent += data

    async def wait_send_all_might_not_block(self) -> None: ...

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while not self.incoming:
            await self.more.wait()
            self.more = trio.Event()
        return self.incoming.pop(0)

    async def aclose(self) -> None: ...


async def test_an_imap_relay_is_cancelled_and_a_pop3_relay_ends_at_the_next_command() -> None:
    relays = OpenRelays()
    client, backend = _Pipe([b"STAT\r\n"]), _Pipe([b"+OK 2 20\r\n"])
    cancelled: list[bool] = []

    async def imap_relay() -> None:
        with relays.holding("dave@example.com", "imap") as held:
            await trio.sleep_forever()
        cancelled.append(held.moved)

    async def pop3_relay() -> None:
        with relays.holding("dave@example.com", "pop3") as held:
            await relay_pop3_until_moved(client, BackendSession(backend), b"", 5.0, lambda: held.moved)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(imap_relay)
        nursery.start_soon(pop3_relay)
        await trio.testing.wait_all_tasks_blocked()
        assert relays.open_logins() == ["dave@example.com"] and relays.count() == 2
        assert bytes(backend.sent) == b"STAT\r\n"
        assert await relays.close_old_sessions("dave@example.com") == 2
        await trio.testing.wait_all_tasks_blocked()
        assert cancelled == [True], "the IMAP relay ended at once"
        assert relays.count() == 1, "the POP3 relay waits for the client's next command"
        client.incoming.append(b"RETR 1\r\n")
        client.more.set()
    assert bytes(backend.sent) == b"STAT\r\n", "nothing reaches the old server after the switch"
    assert bytes(client.sent).endswith(b"-ERR [IN-USE] Your mailbox has moved to the new server; please connect again.\r\n")
    assert relays.count() == 0 and await relays.close_old_sessions("dave@example.com") == 0
