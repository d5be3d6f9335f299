"""The login proxy against the real Dovecot pair, driven by imaplib, poplib and curl."""

from __future__ import annotations

import imaplib
import poplib
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from mailmigrator.adapters.proxy.listeners import ProxyLimits
from mailmigrator.adapters.proxy.throttle import LoginThrottle
from mailmigrator.ops.config import load_config
from mailmigrator.ops.serve import Service, build_service
from mailmigrator.ops.composition import open_store
from testbed import make_message, seed_bulk
from copy_testbed import message_count
from proxy_fixtures import OLD_PASSWORD, Pair, ensure_notice_account, pair, seed_user, with_free_ports, write_config

pytestmark = pytest.mark.dovecot
__all__ = ["pair"]


class Running:
    def __init__(self, service: Service, ports: dict[str, int]) -> None:
        self.service = service
        self.ports = ports
        self.app = service.app

    async def state(self, login: str) -> str:
        return (await trio.to_thread.run_sync(self.app.account, login)).state

    async def wait_state(self, login: str, *states: str, timeout: float = 60) -> str:
        with trio.fail_after(timeout):
            while True:
                if self.app.has_account(login):
                    state = await self.state(login)
                    if state in states:
                        return state
                await trio.sleep(0.2)


async def run_service(tmp: Path, pair: Pair, nursery: trio.Nursery, *, started: bool = True, **kwargs: Any) -> Running:
    config = with_free_ports(load_config(write_config(tmp, pair, **kwargs)))
    wired = open_store(config, create=True)
    assert wired is not None
    if started:
        wired.app.start_run("test")
    service = build_service(config, wired.app, ProxyLimits(failure_delay=0.0, idle_timeout=2.0),
                            LoginThrottle(max_per_login=3, max_per_address=50))
    bound = await nursery.start(service.run)
    ports = {f"{l.protocol}{'s' if l.implicit_tls else ''}@{l.host}": port for l, port in bound}
    return Running(service, ports)


def imap_login(port: int, user: str, password: str, host: str = "127.0.0.1") -> imaplib.IMAP4:
    client = imaplib.IMAP4(host, port, timeout=20)
    client.login(user, password)
    return client


def folders_of(client: imaplib.IMAP4) -> set[str]:
    typ, data = client.list()
    return {line.decode().rsplit(' "', 1)[-1].strip('"') if line.decode().endswith('"') else line.decode().rsplit(" ", 1)[-1] for line in data}


async def test_first_login_migrates_then_serves_from_new_server(pair: Pair, tmp_path: Path) -> None:
    seed_user(pair, "alice@example.com")
    ensure_notice_account(pair)
    async with trio.open_nursery() as nursery:
        running = await run_service(tmp_path, pair, nursery)
        port = running.ports["imap@127.0.0.1"]

        def first() -> tuple[bool, str, bytes, int]:
            client = imap_login(port, "alice", OLD_PASSWORD)
            typ, _ = client.create("Mine")  # refused: the notice account is read-only
            try:
                client.select("INBOX")  # SELECT is turned into EXAMINE
                read_only = False
            except imaplib.IMAP4.readonly:
                read_only = True
            client.shutdown()
            client = imap_login(port, "alice", OLD_PASSWORD)
            client.select("INBOX", readonly=True)
            _, fetched = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            _, flags = client.fetch("1", "(FLAGS)")
            client.logout()
            return read_only, typ, b"".join(p[1] for p in fetched if isinstance(p, tuple)), len(flags)

        read_only, create_status, subjects, _ = await trio.to_thread.run_sync(first)
        assert read_only
        assert create_status == "NO"
        assert b"being moved" in subjects
        assert await running.wait_state("alice@example.com", "completed") == "completed"

        def second() -> tuple[set[str], int]:
            client = imap_login(port, "alice@example.com", OLD_PASSWORD)
            names = folders_of(client)
            typ, data = client.select("INBOX", readonly=True)
            count = int(data[0])
            client.logout()
            return names, count

        names, count = await trio.to_thread.run_sync(second)
        assert "Archive/2020" in names
        assert count == 5
        assert pair.new.passwd_file.read_text().count("alice@example.com:{SHA512-CRYPT}$6$") == 1
        nursery.cancel_scope.cancel()


async def test_migrated_pop3_user_is_served_by_the_new_server(pair: Pair, tmp_path: Path) -> None:
    seed_user(pair, "pete@example.com", messages=3)
    ensure_notice_account(pair)
    async with trio.open_nursery() as nursery:
        running = await run_service(tmp_path, pair, nursery)
        port = running.ports["pop3@127.0.0.1"]

        def pop3_count() -> int:
            client = poplib.POP3("127.0.0.1", port, timeout=20)
            client.user("pete")
            client.pass_(OLD_PASSWORD)
            count = client.stat()[0]
            client.quit()
            return count

        def on_notice() -> tuple[int, str]:
            client = poplib.POP3("127.0.0.1", port, timeout=20)
            client.user("pete")
            client.pass_(OLD_PASSWORD)  # the first login starts the migration and lands on the notice
            count = client.stat()[0]
            try:
                refused = client.dele(1).decode()
            except poplib.error_proto as e:
                refused = e.args[0].decode()
            client.quit()
            return count, refused

        notices = message_count(pair.new, "notice@example.com")
        notice_count, dele_reply = await trio.to_thread.run_sync(on_notice)
        assert notice_count == notices >= 1
        assert dele_reply == "-ERR [SYS/PERM] Migration in progress: this mailbox is read-only."
        assert message_count(pair.new, "notice@example.com") == notices
        assert await running.wait_state("pete@example.com", "completed") == "completed"
        # Mail that only the new server has proves where the POP3 session lands.
        seed_bulk(pair.new, "pete@example.com", "INBOX", [make_message("only-on-new")])
        assert await trio.to_thread.run_sync(pop3_count) == 4
        nursery.cancel_scope.cancel()


def curl(url: str, user: str, password: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *extra, url, "-u", f"{user}:{password}"],
                          capture_output=True, text=True)


async def test_wrong_password_creates_nothing_and_failures_are_throttled(pair: Pair, tmp_path: Path) -> None:
    seed_user(pair, "bob@example.com", messages=1)
    async with trio.open_nursery() as nursery:
        running = await run_service(tmp_path, pair, nursery)
        port = running.ports["imap@127.0.0.1"]
        for _ in range(3):
            result = await trio.to_thread.run_sync(curl, f"imap://127.0.0.1:{port}/", "bob", "wrong")
            assert result.returncode == 67  # curl: login denied
        # An unknown login's wrong passwords are counted, never stored.
        assert not running.app.has_account("bob@example.com")
        assert running.service.proxy.router.rejections.unrecorded == 3
        assert "bob@example.com" not in pair.new.passwd_file.read_text()
        calls_before = (pair.old.log_path.read_text().count("bob@example.com"))

        def throttled() -> str:
            try:
                imap_login(port, "bob", OLD_PASSWORD)
            except imaplib.IMAP4.error as e:
                return str(e)
            return "logged in"

        # Even the right password is refused now, and the old server is not asked.
        assert "Too many failed logins" in await trio.to_thread.run_sync(throttled)
        assert pair.old.log_path.read_text().count("bob@example.com") == calls_before
        nursery.cancel_scope.cancel()


async def test_locked_user_without_notice_account_is_refused_over_pop3(pair: Pair, tmp_path: Path) -> None:
    seed_user(pair, "carol@example.com", messages=2)
    async with trio.open_nursery() as nursery:
        running = await run_service(tmp_path, pair, nursery, migration_account="")
        port = running.ports["pop3@127.0.0.1"]

        def pop() -> str:
            client = poplib.POP3("127.0.0.1", port, timeout=20)
            client.user("carol")
            try:
                client.pass_(OLD_PASSWORD)
            except poplib.error_proto as e:
                return e.args[0].decode()
            finally:
                client.close()
            return "logged in"

        assert await trio.to_thread.run_sync(pop) == "-ERR [IN-USE] Migration in progress, try again later"
        assert await running.wait_state("carol@example.com", "completed") == "completed"
        nursery.cancel_scope.cancel()


async def test_passwords_only_then_curl_lists_the_new_server(pair: Pair, tmp_path: Path) -> None:
    seed_user(pair, "dave@example.com", messages=3)
    ran = tmp_path / "post-script.args"
    script = tmp_path / "post.sh"
    script.write_text(f'#!/bin/sh\nread -r password\nprintf "%s|%s" "$1" "$password" > {ran}\n')
    script.chmod(0o755)
    async with trio.open_nursery() as nursery:
        running = await run_service(tmp_path, pair, nursery, passwords_only=True,
                                    extra_migration=f'post_migrate_script = "{script}"\n')
        port = running.ports["imap@127.0.0.1"]
        result = await trio.to_thread.run_sync(curl, f"imap://127.0.0.1:{port}/", "dave", OLD_PASSWORD)
        assert result.returncode == 0, result.stderr
        # No mail was copied: the new server's listing has no Archive/2020.
        assert "Archive/2020" not in result.stdout and "INBOX" in result.stdout
        assert await running.state("dave@example.com") == "completed"
        line = [l for l in pair.new.passwd_file.read_text().splitlines() if l.startswith("dave@example.com:")]
        assert len(line) == 1 and line[0].split(":")[1].startswith("{SHA512-CRYPT}$6$")
        # The same flow as every other migration: the post-migrate script ran with EMAIL, the password on stdin.
        assert ran.read_text() == f"dave@example.com|{OLD_PASSWORD}"
        names = [type(e).__name__ for e in running.app.history("dave@example.com")]
        assert "PostScriptRan" in names and names.count("AccountCreated") == 1
        nursery.cancel_scope.cancel()


async def test_stopped_run_passes_through_to_old_server_with_poplib(pair: Pair, tmp_path: Path) -> None:
    seed_user(pair, "erin@example.com", messages=4)
    async with trio.open_nursery() as nursery:
        running = await run_service(tmp_path, pair, nursery, started=False)
        port = running.ports["pop3@127.0.0.1"]

        def pop() -> int:
            client = poplib.POP3("127.0.0.1", port, timeout=20)
            client.user("erin")
            client.pass_(OLD_PASSWORD)
            count, _ = client.stat()
            client.quit()
            return count

        assert await trio.to_thread.run_sync(pop) == 4  # the old INBOX
        names = [type(e).__name__ for e in running.app.history("erin@example.com")]
        assert names == ["Registered", "LoginSeen"]
        # `start` from another process is obeyed within a few seconds.
        await trio.to_thread.run_sync(running.app.start_run, "test")
        with trio.fail_after(5):
            while running.service.node.run_state.state != "started":
                await trio.sleep(0.2)
        nursery.cancel_scope.cancel()


async def test_starttls_stls_and_implicit_tls(pair: Pair, tmp_path: Path) -> None:
    seed_user(pair, "frank@example.com", messages=1)
    async with trio.open_nursery() as nursery:
        # Stopped run: every login passes through to the old server, which has POP3 too.
        running = await run_service(tmp_path, pair, nursery, started=False,
                                    extra_proxy="require_tls_for_login = true\n")
        context = ssl.create_default_context(cafile=str(pair.workdir / "ca.pem"))

        def clients() -> list[str]:
            out = []
            plain = imaplib.IMAP4("127.0.0.1", running.ports["imap@127.0.0.1"], timeout=20)
            assert "LOGINDISABLED" in plain.capabilities
            try:
                plain.login("frank", OLD_PASSWORD)
            except imaplib.IMAP4.error as e:
                out.append(str(e))
            plain.starttls(context)
            out.append(plain.login("frank", OLD_PASSWORD)[0])
            plain.logout()
            implicit = imaplib.IMAP4_SSL("127.0.0.1", running.ports["imaps@127.0.0.1"], ssl_context=context, timeout=20)
            out.append(implicit.login("frank", OLD_PASSWORD)[0])
            implicit.logout()
            pop = poplib.POP3("127.0.0.1", running.ports["pop3@127.0.0.1"], timeout=20)
            pop.stls(context)
            pop.user("frank")
            out.append(pop.pass_(OLD_PASSWORD).decode()[:3])
            pop.quit()
            pops = poplib.POP3_SSL("127.0.0.1", running.ports["pop3s@127.0.0.1"], context=context, timeout=20)
            pops.user("frank")
            out.append(pops.pass_(OLD_PASSWORD).decode()[:3])
            pops.quit()
            return out

        refused, *logged_in = await trio.to_thread.run_sync(clients)
        assert "PRIVACYREQUIRED" in refused
        assert logged_in == ["OK", "OK", "+OK", "+OK"]
        nursery.cancel_scope.cancel()


async def test_twenty_parallel_logins_start_one_migration(pair: Pair, tmp_path: Path) -> None:
    seed_user(pair, "gina@example.com", messages=6)
    ensure_notice_account(pair, "notice2@example.com")
    async with trio.open_nursery() as nursery:
        running = await run_service(tmp_path, pair, nursery, migration_account="notice2@example.com")
        port = running.ports["imap@127.0.0.1"]
        results: list[str] = []

        def one() -> None:
            client = imap_login(port, "gina", OLD_PASSWORD)
            results.append("ok")
            client.logout()

        async with trio.open_nursery() as logins:
            for _ in range(20):
                logins.start_soon(trio.to_thread.run_sync, one)
        assert results == ["ok"] * 20
        assert await running.wait_state("gina@example.com", "completed") == "completed"
        names = [type(e).__name__ for e in running.app.history("gina@example.com")]
        assert names.count("AccountCreated") == 1 and names.count("MigrationStarted") == 1
        snapshot = await trio.to_thread.run_sync(pair.new.snapshot, "gina@example.com")
        assert len(snapshot.folders["INBOX"]) == 6  # copied once, no duplicates
        nursery.cancel_scope.cancel()


async def test_bare_login_domain_follows_local_address(pair: Pair, tmp_path: Path) -> None:
    seed_user(pair, "hank@navi1.com", messages=1)
    seed_user(pair, "hank@navi2.com", messages=2)
    async with trio.open_nursery() as nursery:
        config = with_free_ports(load_config(write_config(
            tmp_path, pair, passwords_only=True, tls=False, listen="127.0.0.2",
            domains={"127.0.0.2": "navi1.com", "127.0.0.3": "navi2.com"})))
        from mailmigrator.ops.config import Endpoint
        proxy = config.proxy.model_copy(update={"imap": (Endpoint("127.0.0.2", 0), Endpoint("127.0.0.3", 0))})
        config = config.model_copy(update={"proxy": proxy})
        wired = open_store(config, create=True)
        assert wired is not None
        wired.app.start_run("test")
        service = build_service(config, wired.app, ProxyLimits(failure_delay=0.0))
        bound = await nursery.start(service.run)
        ports = {l.host: port for l, port in bound if l.protocol == "imap"}
        for host in ("127.0.0.2", "127.0.0.3"):
            result = await trio.to_thread.run_sync(curl, f"imap://{host}:{ports[host]}/", "hank", OLD_PASSWORD)
            assert result.returncode == 0, result.stderr
        assert wired.app.account("hank@navi1.com").state == "completed"
        assert wired.app.account("hank@navi2.com").state == "completed"
        nursery.cancel_scope.cancel()


async def test_malformed_input_gets_bad_and_the_connection_survives(pair: Pair, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        running = await run_service(tmp_path, pair, nursery, tls=False)
        stream = await trio.open_tcp_stream("127.0.0.1", running.ports["imap@127.0.0.1"])
        received = b""

        async def until(marker: bytes) -> bytes:
            nonlocal received
            with trio.fail_after(10):
                while marker not in received:
                    received += await stream.receive_some(65536)
            head, _, rest = received.partition(marker)
            received = rest
            return head + marker

        await until(b"ready.\r\n")
        await stream.send_all(b'a1 LOGIN "unterminated\r\n')
        assert b"a1 BAD Unterminated" in await until(b"\r\n")
        await stream.send_all(b"a2 SELECT INBOX\r\n")
        assert b"a2 BAD Command not allowed before login" in await until(b"\r\n")
        await stream.send_all(b"a3 LOGIN " + b"x" * 20000 + b"\r\n")
        assert b"a3 BAD [TOOBIG]" in await until(b"\r\n")
        await stream.send_all(b"a4 LOGIN bob {999999999}\r\n")
        assert b"a4 BAD [TOOBIG]" in await until(b"\r\n")
        await stream.send_all(b"a5 NOOP\r\n")
        assert b"a5 OK" in await until(b"\r\n")
        # Idle pre-auth connections are dropped (2 s in this test).
        assert b"BYE Idle" in await until(b"\r\n")
        await stream.aclose()
        nursery.cancel_scope.cancel()
