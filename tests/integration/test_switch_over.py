"""`while_copying`: users keep working on the old server during the copy, then the account switches over,
through `serve`'s listeners and the real Dovecot pair."""

from __future__ import annotations

import contextlib
import imaplib
import json
import poplib
import secrets
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

import testbed
from copy_testbed import FaultyRelay, message_count, run_cli
from multinode import cli as fleet_cli
from multinode import fleet
from multinode import wait_for as fleet_wait
from mailmigrator.adapters.proxy.listeners import ProxyLimits
from mailmigrator.adapters.proxy.throttle import LoginThrottle
from mailmigrator.ops.composition import open_store
from mailmigrator.ops.config import load_config
from mailmigrator.ops.serve import Service, build_service
from mailmigrator.projections.accounts import apply_to_account, event_name, new_account_doc
from proxy_fixtures import OLD_PASSWORD, Pair, pair, with_free_ports, write_config
from test_serve_restart import account_state, config_text, free_port, start_serve, wait_for
from testbed import make_message, seed_bulk

pytestmark = pytest.mark.dovecot
__all__ = ["pair"]

log = structlog.get_logger("tests.switch")

INBOX_MESSAGES = 300
BODY = "x" * 5000


def seed(pair: Pair, login: str) -> None:
    pair.old.add_user(login, OLD_PASSWORD)
    pair.old.wait_for_user(login)
    seed_bulk(pair.old, login, "INBOX", [make_message(f"{login}-{i}", body=BODY) for i in range(INBOX_MESSAGES)])
    seed_bulk(pair.old, login, "Archive/2020", [make_message(f"{login}-a{i}") for i in range(2)])


async def serve_through(tmp: Path, pair: Pair, nursery: trio.Nursery, source_port: int,
                        **kwargs: Any) -> tuple[Service, int, int]:
    """`serve`'s tasks in this process, the copy reading the old server through `source_port`."""
    path = write_config(tmp, pair, tls=False, migration_account="", **kwargs)
    path.write_text(path.read_text().replace(f"imap_port = {pair.old.imap_port}\n",
                                             f"imap_port = {source_port}\n", 1))
    return await serve_config(path, nursery)


async def serve_config(path: Path, nursery: trio.Nursery) -> tuple[Service, int, int]:
    """`serve`'s tasks for the config at `path` in this process, the run started; (service, IMAP port, POP3 port)."""
    config = with_free_ports(load_config(path))
    wired = open_store(config, create=True)
    assert wired is not None
    wired.app.start_run("test")
    service = build_service(config, wired.app, ProxyLimits(failure_delay=0.0, idle_timeout=30.0),
                            LoginThrottle(max_per_login=10, max_per_address=50))
    bound = await nursery.start(service.run)
    ports = {listener.protocol: port for listener, port in bound}
    return service, ports["imap"], ports["pop3"]


@contextlib.asynccontextmanager
async def serving_slowly(tmp: Path, pair: Pair, login: str,
                         while_copying: str) -> AsyncIterator[tuple[Service, int, int]]:
    """`login` seeded, and `serve` whose copies read the old server through a slow link: a first pass takes seconds."""
    seed(pair, login)
    with FaultyRelay(("127.0.0.1", pair.old.imap_port), bytes_per_second=400_000) as relay:
        async with trio.open_nursery() as nursery:
            yield await serve_through(tmp, pair, nursery, relay.port, while_copying=while_copying)
            nursery.cancel_scope.cancel()


def state_of(service: Service, login: str) -> str:
    return service.app.account(login).state if service.app.has_account(login) else "none"


async def wait_state(service: Service, login: str, *states: str, timeout: float = 90) -> None:
    with trio.fail_after(timeout):
        while state_of(service, login) not in states:
            await trio.sleep(0.1)


def inbox_count(client: imaplib.IMAP4) -> int:
    typ, data = client.select("INBOX")
    assert typ == "OK"
    return int(data[0])


def folder_names(client: imaplib.IMAP4) -> set[str]:
    _, data = client.list()
    return {line.decode().rsplit(' "', 1)[-1].strip('"') if line.decode().endswith('"')
            else line.decode().rsplit(" ", 1)[-1] for line in data if isinstance(line, bytes)}


def wait_for_bye(client: imaplib.IMAP4, timeout: float = 90) -> float:
    """NOOP until the proxy ends the session with `* BYE`; when it did (monotonic)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.noop()
        except imaplib.IMAP4.abort as e:
            assert "moved to the new server" in str(e), str(e)
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError("the old-server session was not closed")


def subject_count(server: testbed.DovecotServer, login: str, text: str) -> int:
    """INBOX messages of `login` whose subject holds `text`."""
    with server.imap(login) as client:
        client.select_folder("INBOX", readonly=True)
        return len(client.search(["SUBJECT", text]))


def locked_after_each_event(service: Service, login: str) -> list[tuple[str, bool]]:
    """The lock projection replayed over the account's recorded events."""
    events = service.app.history(login)
    doc = new_account_doc(login, "")
    seen = []
    for event in events:
        apply_to_account(doc, event)
        seen.append((event_name(event), doc["locked"]))
    return seen


async def test_the_user_works_on_the_old_server_during_the_copy_then_switches(pair: Pair, tmp_path: Path) -> None:
    login = "keep@example.com"
    # The old server behind a slow link: the first pass takes seconds, the user's session is small.
    async with serving_slowly(tmp_path, pair, login, "old-server") as (service, port, _):

        def work_during_the_copy() -> tuple[int, set[str], list[str], str, float]:
            client = imaplib.IMAP4("127.0.0.1", port, timeout=30)
            client.login("keep", OLD_PASSWORD)
            count = inbox_count(client)
            names = folder_names(client)
            relayed = service.proxy.old_relays.open_logins()
            during = state_of(service, login)
            typ, _ = client.append("INBOX", None, None, make_message("typed-during-the-copy"))
            assert typ == "OK"
            # The MX already points at the new server: mail delivered there must survive every pass.
            deadline = time.monotonic() + 30
            while state_of(service, login) != "copying" and time.monotonic() < deadline:
                time.sleep(0.05)
            seed_bulk(pair.new, login, "INBOX", [make_message("delivered-to-the-new-server")])
            return count, names, relayed, during, wait_for_bye(client)

        count, names, relayed, during, closed_at = await trio.to_thread.run_sync(work_during_the_copy)
        assert count == INBOX_MESSAGES and "INBOX" in names and any(n.endswith("2020") for n in names), names
        assert relayed == [login], "the login was relayed to the old server"
        assert during in ("verified", "created", "copying")
        await wait_state(service, login, "completed")

        def after_the_switch() -> tuple[int, list[str]]:
            client = imaplib.IMAP4("127.0.0.1", port, timeout=30)
            client.login("keep", OLD_PASSWORD)
            try:
                return inbox_count(client), service.proxy.old_relays.open_logins()
            finally:
                client.logout()

        count_after, relayed_after = await trio.to_thread.run_sync(after_the_switch)
        history = service.app.history(login)
        locks = locked_after_each_event(service, login)

    assert relayed_after == [], "after the switch the login went to the new server"
    assert count_after == INBOX_MESSAGES + 2
    # Exactly once on the new server: the message typed on the old server during the copy, the one
    # delivered to the new server, and nothing twice.
    assert message_count(pair.new, login) == INBOX_MESSAGES + 4 == message_count(pair.old, login) + 1
    assert [subject_count(pair.new, login, s) for s in ("typed-during-the-copy", "delivered-to-the-new-server")] \
        == [1, 1]
    names_recorded = [event_name(e) for e in history]
    for name in ("CopyModeChosen", "CopyCaughtUp", "SwitchStarted", "MigrationCompleted", "SwitchedOver"):
        assert name in names_recorded, names_recorded
    assert names_recorded.index("CopyCaughtUp") < names_recorded.index("SwitchStarted") \
        < names_recorded.index("MigrationCompleted") < names_recorded.index("SwitchedOver")
    switched = history[-1] if event_name(history[-1]) == "SwitchedOver" else \
        next(e for e in history if event_name(e) == "SwitchedOver")
    assert switched.sessions_closed == 1  # type: ignore[attr-defined]
    assert switched.delta_messages in (0, 1)  # type: ignore[attr-defined]
    log.info("switch measured", duration_seconds=switched.duration_seconds,  # type: ignore[attr-defined]
             delta_messages=switched.delta_messages)  # type: ignore[attr-defined]
    print(f"switch took {switched.duration_seconds:.3f} s")  # type: ignore[attr-defined]
    # The lock projection: locked from SwitchStarted until MigrationCompleted, never before or after.
    start, end = names_recorded.index("SwitchStarted"), names_recorded.index("MigrationCompleted")
    assert [locked for _, locked in locks] == [start <= i < end for i in range(len(locks))], locks


async def test_refuse_mode_refuses_during_the_copy_and_serves_the_new_server_after(
        pair: Pair, tmp_path: Path) -> None:
    login = "refused@example.com"
    async with serving_slowly(tmp_path, pair, login, "refuse") as (service, port, _):

        def log_in() -> imaplib.IMAP4:
            client = imaplib.IMAP4("127.0.0.1", port, timeout=30)
            client.login("refused", OLD_PASSWORD)
            return client

        with pytest.raises(imaplib.IMAP4.error, match="Migration in progress"):
            await trio.to_thread.run_sync(log_in)
        assert state_of(service, login) in ("verified", "created", "copying")
        await wait_state(service, login, "completed")
        client = await trio.to_thread.run_sync(log_in)
        assert await trio.to_thread.run_sync(inbox_count, client) == INBOX_MESSAGES
        assert service.proxy.old_relays.open_logins() == []
        await trio.to_thread.run_sync(client.logout)
        names = [event_name(e) for e in service.app.history(login)]
    assert "CopyCaughtUp" not in names and "SwitchStarted" not in names and names.count("MigrationCompleted") == 1


def test_serve_killed_mid_switch_finishes_the_switch_after_a_restart(
    old_server: testbed.DovecotServer, new_server: testbed.DovecotServer, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    login = f"switch-{secrets.token_hex(3)}@example.com"
    password = secrets.token_urlsafe(10)
    old_server.add_user(login, password)
    old_server.wait_for_user(login)
    first, late = 400, 300
    seed_bulk(old_server, login, "INBOX", [make_message(f"{login}-{i}", body=BODY) for i in range(first)])
    config, serve_log, proxy_port = tmp_path / "mm.toml", tmp_path / "serve.stderr", free_port()

    def cli(*args: str, stdin: str = "") -> tuple[int, str, str]:
        return run_cli(capsys, monkeypatch, stdin, "--config", str(config), *args)

    def copied_some() -> bool:
        code, out, _ = cli("show", login, "--json")
        return code == 0 and json.loads(out)["messages"] > 0

    # A slow link to the old server: both passes take seconds, so serve can be killed mid-switch.
    with FaultyRelay(("127.0.0.1", old_server.imap_port), bytes_per_second=400_000) as relay:
        config.write_text(config_text(tmp_path, relay.port, old_server, new_server, proxy_port,
                                      while_copying="old-server"))
        assert cli("start")[0] == 0
        serve = start_serve(config, serve_log)
        try:
            wait_for(lambda: b'"ready"' in serve_log.read_bytes() or serve.poll() is not None, "serve to be ready")
            client = imaplib.IMAP4("127.0.0.1", proxy_port, timeout=30)
            client.login(login, password)
            assert int(client.select("INBOX")[1][0]) == first, "the user works on the old server"
            wait_for(copied_some, "a first checkpoint")
            # Mail that reaches the old server after the first pass listed the folder: the final delta's.
            seed_bulk(old_server, login, "INBOX", [make_message(f"{login}-late-{i}", body=BODY) for i in range(late)])
            wait_for(lambda: account_state(capsys, monkeypatch, config, login) == "switching", "the switch", 120)
            with pytest.raises((imaplib.IMAP4.abort, OSError)):
                for _ in range(50):
                    client.noop()
                    time.sleep(0.1)
        finally:
            serve.send_signal(signal.SIGKILL)
            serve.wait(10)
        assert account_state(capsys, monkeypatch, config, login) == "switching"
        code, out, _ = cli("show", login, "--json")
        assert json.loads(out)["locked"] is True, "locked while switching"

        serve = start_serve(config, serve_log)
        try:
            wait_for(lambda: account_state(capsys, monkeypatch, config, login) == "completed",
                     "the resumed switch to complete", timeout=120)
        finally:
            serve.send_signal(signal.SIGTERM)
            assert serve.wait(20) == 0, serve_log.read_text()[-3000:]

    config.write_text(config_text(tmp_path, old_server.imap_port, old_server, new_server, proxy_port,
                                  while_copying="old-server"))
    assert message_count(new_server, login) == first + late == message_count(old_server, login)  # no duplicates
    code, out, err = cli("verify", login, "--password-stdin", stdin=password + "\n")
    assert code == 0, out + err
    _, history, _ = cli("history", login, "--json")
    names = [e["event"] for e in json.loads(history)]
    assert names.count("SwitchStarted") == 2, names  # the restarted node claimed the switch again
    assert names[-1] == "MailboxesCompared", names  # the verify above, recorded
    assert names.count("MigrationCompleted") == 1 and names[-2] in ("SwitchedOver", "PostScriptRan"), names
    code, out, _ = cli("show", login, "--json")
    doc = json.loads(out)
    assert doc["locked"] is False and doc["switch"]["delta_messages"] > 0
    print(f"resumed switch took {doc['switch']['duration_seconds']:.3f} s "
          f"({doc['switch']['delta_messages']} messages in the final delta)")


def test_a_node_closes_its_old_server_sessions_when_another_node_switches_the_account(
    pair: Pair, tmp_path: Path, pg_database: str,
) -> None:
    login = f"fleet-{secrets.token_hex(3)}@example.com"
    seed(pair, login)
    base = write_config(tmp_path, pair, tls=False, migration_account="", while_copying="old-server")
    with FaultyRelay(("127.0.0.1", pair.old.imap_port), bytes_per_second=400_000) as relay:
        base.write_text(base.read_text().replace(f"imap_port = {pair.old.imap_port}\n",
                                                 f"imap_port = {relay.port}\n", 1))
        with fleet(base, f"postgresql://postgres@127.0.0.1:5432/{pg_database}", tmp_path, count=2) as nodes:
            assert fleet_cli(nodes[0].config, "start") == 0
            for node in nodes:
                fleet_wait(lambda: node.run_state() == "started", f"{node.name} to obey start", timeout=10)
            # The user's laptop on one node (which migrates the account), the phone on the other.
            laptop = nodes[0].imap_login(login, OLD_PASSWORD)
            phone = nodes[1].imap_login(login, OLD_PASSWORD)
            assert inbox_count(laptop) == INBOX_MESSAGES == inbox_count(phone)
            closed = [wait_for_bye(laptop), wait_for_bye(phone)]
            after = nodes[1].imap_login(login, OLD_PASSWORD)
            assert inbox_count(after) == INBOX_MESSAGES
            after.logout()
            logins = nodes[1].log_events("login")
            # Either node may win the copy's claim; the other learns of the switch from the store.
            switched = {node.name: node.log_events("switched over") for node in nodes}
            moved = {node.name: node.log_events("old-server sessions closed: the account moved") for node in nodes}
    assert [e["destination"] for e in logins] == ["old", "new"], logins
    switcher = next(name for name, records in switched.items() if records)
    other = next(name for name in switched if name != switcher)
    assert switched[switcher][0]["sessions_closed"] == 1 and not switched[other]
    assert [r["login"] for r in moved[other]] == [login] and not moved[switcher]
    print(f"the other node closed its session {abs(closed[1] - closed[0]):.2f} s after the switching node")


async def test_a_pop3_session_on_the_old_server_ends_at_its_next_command_after_the_switch(
        pair: Pair, tmp_path: Path) -> None:
    login = "popper@example.com"
    async with serving_slowly(tmp_path, pair, login, "old-server") as (service, _, port):

        def log_in() -> poplib.POP3:
            client = poplib.POP3("127.0.0.1", port, timeout=30)
            client.user("popper")
            client.pass_(OLD_PASSWORD)
            return client

        client = await trio.to_thread.run_sync(log_in)
        assert (await trio.to_thread.run_sync(client.stat))[0] == INBOX_MESSAGES
        assert service.proxy.old_relays.open_logins() == [login]
        await wait_state(service, login, "completed")
        with pytest.raises(poplib.error_proto, match="moved to the new server"):
            await trio.to_thread.run_sync(client.stat)
        again = await trio.to_thread.run_sync(log_in)
        assert (await trio.to_thread.run_sync(again.stat))[0] == INBOX_MESSAGES
        await trio.to_thread.run_sync(again.quit)
        assert service.proxy.old_relays.open_logins() == []
        switched = service.app.history(login)[-1]
    assert event_name(switched) == "SwitchedOver" and switched.sessions_closed == 1  # type: ignore[attr-defined]
