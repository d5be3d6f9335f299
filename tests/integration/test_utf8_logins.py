"""UTF-8 user names and passwords on every login path, against the real Dovecot pair.

Dovecot's default `auth_username_chars` refuses non-ASCII user names; the test bed
empties it (any name), as a site with such local parts must.
"""

from __future__ import annotations

import contextlib
import imaplib
import json
import poplib
import secrets
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import trio

from console_fixtures import open_wired, serve_console
from copy_testbed import message_count, run_cli, secret_file
from mailmigrator.domain.credentials import Credentials
from mailmigrator.adapters.imap.connection import close_imap, open_imap
from mailmigrator.adapters.mail.connection import LoginPlan, LoginRefused, ServerAddress
import testbed
from mailmigrator.ops.config import load_config
from proxy_fixtures import Pair, ensure_notice_account, pair
from test_operator_flow import account, config_file, events
from test_proxy import run_service

pytestmark = pytest.mark.dovecot
__all__ = ["pair"]

PASSWORD = "Grüße-äöü 2024"
_numbers = iter(range(1, 10_000))


def utf8_account(old: testbed.DovecotServer, local: str = "jürgen", password: str = PASSWORD) -> str:
    """A fresh old-server user named `local...@example.com` with `password`, INBOX and a non-ASCII folder."""
    login = f"{local}{next(_numbers)}-{secrets.token_hex(3)}@example.com"
    old.add_user(login, password)
    old.wait_for_user(login)
    testbed.seed_bulk(old, login, "INBOX", [testbed.make_message(f"{login}-{i}") for i in range(3)])
    testbed.seed_bulk(old, login, "Übersicht", [testbed.make_message(f"{login}-ü{i}") for i in range(2)])
    return login


def cli(config: Path, stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed `mailmigrator` console script in a child process."""
    script = Path(sys.executable).parent / "mailmigrator"
    return subprocess.run([str(script), "--config", str(config), *args], input=stdin, capture_output=True,
                          text=True, encoding="utf-8", timeout=120)


def test_dovecot_accepts_a_utf8_user_name_and_password(old_server: testbed.DovecotServer) -> None:
    login = utf8_account(old_server)
    assert message_count(old_server, login) == 5
    with old_server.imap(login, PASSWORD) as client:
        assert client.select_folder("INBOX", readonly=True)[b"EXISTS"] == 3


@pytest.mark.parametrize("local", ["jürgen", "plain"])
def test_migrate_user_command_with_utf8_credentials_then_verify_equal(
    old_server: testbed.DovecotServer, new_server: testbed.DovecotServer, tmp_path: Path, local: str,
) -> None:
    config = config_file(tmp_path, old_server, new_server)
    login = utf8_account(old_server, local)
    result = cli(config, PASSWORD + "\n", "migrate", "--user", login, "--password-stdin")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert message_count(new_server, login) == 5
    result = cli(config, PASSWORD + "\n", "verify", login, "--password-stdin")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{login}: old and new mailbox are equal" in result.stdout
    assert new_server.snapshot(login).folders == old_server.snapshot(login, PASSWORD).folders


def test_finish_sweeps_late_mail_with_the_utf8_password_from_the_vault(
    old_server: testbed.DovecotServer, new_server: testbed.DovecotServer, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = config_file(tmp_path, old_server, new_server)
    login = utf8_account(old_server)
    code, out, err = run_cli(capsys, monkeypatch, PASSWORD + "\n", "--config", str(config), "migrate", "--user",
                             login, "--password-stdin")
    assert code == 0, out + err
    testbed.seed_bulk(old_server, login, "INBOX", [testbed.make_message(f"{login}-late-{i}") for i in range(2)])
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "finish")
    assert code == 0, out + err
    assert "1 account(s) swept, 2 late message(s) copied" in out
    assert [e["event"] for e in events(capsys, monkeypatch, config, login)][-2:] == ["FinishSwept",
                                                                                     "CredentialDestroyed"]
    code, out, err = run_cli(capsys, monkeypatch, PASSWORD + "\n", "--config", str(config), "verify", login,
                             "--password-stdin")
    assert code == 0 and f"{login}: old and new mailbox are equal" in out, out + err


def test_pop3_source_account_with_a_utf8_password(
    old_server: testbed.DovecotServer, new_server: testbed.DovecotServer, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = config_file(tmp_path, old_server, new_server, source=f'protocol = "pop3"\npop3_port = {old_server.pop3_port}\n')
    login = utf8_account(old_server)
    code, out, err = run_cli(capsys, monkeypatch, PASSWORD + "\n", "--config", str(config), "migrate", "--user",
                             login, "--password-stdin")
    assert code == 0, out + err
    # POP3 has no flags and no INTERNALDATE: the messages themselves must match.
    inbox = lambda server, password=None: sorted(r.sha256 for r in server.snapshot(login, password).folders["INBOX"])  # noqa: E731
    assert inbox(new_server) == inbox(old_server, PASSWORD) and len(inbox(new_server)) == 3
    code, out, err = run_cli(capsys, monkeypatch, PASSWORD + "\n", "--config", str(config), "verify", login,
                             "--password-stdin")
    assert code == 0 and f"{login}: old and new mailbox are equal" in out, out + err


def plain_login_through(port: int, login: str, password: str) -> imaplib.IMAP4:
    """A client logged in to the proxy with AUTHENTICATE PLAIN (imaplib sends it as UTF-8)."""
    client = imaplib.IMAP4("127.0.0.1", port, timeout=20)
    client.authenticate("PLAIN", lambda _challenge: f"\0{login}\0{password}")
    return client


async def test_proxy_login_and_background_copy_with_utf8_credentials(pair: Pair, tmp_path: Path) -> None:
    login = utf8_account(pair.old)
    ensure_notice_account(pair)
    async with trio.open_nursery() as nursery:
        running = await run_service(tmp_path, pair, nursery)
        port = running.ports["imap@127.0.0.1"]
        await trio.to_thread.run_sync(lambda: plain_login_through(port, login, PASSWORD).logout())
        assert await running.wait_state(login, "completed", "failed") == "completed"

        def served() -> int:
            client = plain_login_through(port, login, PASSWORD)
            _, data = client.select('"&ANw-bersicht"', readonly=True)  # RFC 3501 modified UTF-7 of "Übersicht"
            client.logout()
            return int(data[0])

        assert await trio.to_thread.run_sync(served) == 2

        def served_over_pop3() -> int:
            pop = poplib.POP3("127.0.0.1", running.ports["pop3@127.0.0.1"], timeout=20)
            pop.user(login)  # poplib sends UTF-8
            pop.pass_(PASSWORD)
            count = pop.stat()[0]
            pop.quit()
            return count

        assert await trio.to_thread.run_sync(served_over_pop3) == 3
        nursery.cancel_scope.cancel()
    config = tmp_path / "mailmigrator.toml"
    result = cli(config, PASSWORD + "\n", "verify", login, "--password-stdin")
    assert result.returncode == 0 and f"{login}: old and new mailbox are equal" in result.stdout, result.stderr


WRONG_USER_PASSWORD = "Falsch-äöß"
WRONG_ADMIN_PASSWORD = "Grüne-2024"


def leaked(text: str) -> list[str]:
    """Every way a character of the two wrong passwords (or a password itself) shows in `text`."""
    found = [p for p in (WRONG_USER_PASSWORD, WRONG_ADMIN_PASSWORD) if p in text]
    for char in {c for c in WRONG_USER_PASSWORD + WRONG_ADMIN_PASSWORD if not c.isascii()}:
        forms = {char, ascii(char)[1:-1], f"\\u{ord(char):04x}", char.encode().decode("latin-1")}
        found += [form for form in forms if form in text]
    # A UnicodeError's text names the position of the character instead.
    return found + [word for word in ("codec", "position", "Traceback") if word in text]


async def test_failed_utf8_logins_leave_no_character_of_the_password_anywhere(
    old_server: testbed.DovecotServer, new_server: testbed.DovecotServer, tmp_path: Path,
) -> None:
    login, password = await trio.to_thread.run_sync(lambda: account(old_server))
    admin = secret_file(tmp_path, "admin.secret", WRONG_ADMIN_PASSWORD)
    config = config_file(
        tmp_path, old_server, new_server,
        source=f'admin_user = "{old_server.master_user}"\nadmin_password_file = "{admin}"\n'
               'admin_login = "dovecot-master"\n',
        migration=f'log_file = "{tmp_path / "migration.log"}"\naccess_mode = "standard"\n')
    texts: dict[str, str] = {}

    def run(name: str, stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
        result = cli(config, stdin, *args)
        texts[name] = result.stdout + result.stderr
        return result

    # The user's wrong password is refused at the check; the admin's wrong password stops the copy.
    refused = await trio.to_thread.run_sync(
        lambda: run("migrate wrong", WRONG_USER_PASSWORD + "\n", "migrate", "--user", login, "--password-stdin"))
    assert refused.returncode == 1 and "refused the password" in refused.stderr, texts["migrate wrong"]
    failed = await trio.to_thread.run_sync(
        lambda: run("migrate", password + "\n", "migrate", "--user", login, "--password-stdin"))
    assert failed.returncode == 1 and "refused" in texts["migrate"], texts["migrate"]
    for name, args in {"history": ("history", login, "--json"), "show": ("show", login),
                       "status": ("status", "--json")}.items():
        result = await trio.to_thread.run_sync(lambda: run(name, "", *args))
        assert result.returncode == 0, texts[name]
    history = json.loads(texts["history"])
    reasons = [e["data"] for e in history if e["event"] in ("PasswordRejected", "MigrationFailed")]
    assert {e["event"] for e in history} >= {"PasswordRejected", "MigrationFailed"}
    texts["events"] = json.dumps(history, ensure_ascii=False)
    texts["log file"] = (tmp_path / "migration.log").read_text()
    assert "refused" in texts["log file"]

    loaded = load_config(config)
    wired = open_wired(loaded)
    try:
        async with serve_console(loaded, wired) as console, console.logged_in() as (client, _):
            for path in ("/api/accounts", f"/api/accounts/{login}", f"/api/accounts/{login}/history", "/api/log"):
                response = await client.get(path)
                assert response.status_code == 200, response.text
                texts[path] = json.dumps(response.json(), ensure_ascii=False)
    finally:
        wired.close()
    assert "refused" in texts[f"/api/accounts/{login}"], reasons
    assert {name: leaked(text) for name, text in texts.items() if leaked(text)} == {}


@pytest.mark.parametrize("admin_login", ["sasl", "dovecot-master"])
def test_source_admin_login_copies_a_utf8_named_account(
    old_server: testbed.DovecotServer, new_server: testbed.DovecotServer, tmp_path: Path, admin_login: str,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = secret_file(tmp_path, "admin.secret", old_server.master_password or "")
    config = config_file(tmp_path, old_server, new_server, source=(
        f'admin_user = "{old_server.master_user}"\nadmin_password_file = "{admin}"\nadmin_login = "{admin_login}"\n'))
    login = utf8_account(old_server)
    code, out, err = run_cli(capsys, monkeypatch, PASSWORD + "\n", "--config", str(config), "migrate", "--user",
                             login, "--password-stdin")
    assert code == 0, out + err
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "verify", login)
    assert code == 0 and f"{login}: old and new mailbox are equal" in out, out + err


class PlainHidingRelay:
    """A loopback relay to a real server that deletes " AUTH=PLAIN" from what the server says."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.hidden = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(server, client, b" AUTH=PLAIN"), daemon=True).start()
            threading.Thread(target=self._pump, args=(client, server, b""), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, hidden: bytes) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):  # Dovecot sends each capability line in one write
                if hidden and hidden in data:
                    self.hidden += 1
                    data = data.replace(hidden, b"")
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def test_login_command_carries_utf8_as_literals_when_plain_is_not_offered(old_server: testbed.DovecotServer) -> None:
    login = utf8_account(old_server)
    relay = PlainHidingRelay(("127.0.0.1", old_server.imap_port or 0))
    address = ServerAddress("127.0.0.1", relay.port, tls="disable")
    try:
        client = open_imap(address, LoginPlan(login, Credentials(login, PASSWORD)))
        try:
            assert relay.hidden >= 1  # the greeting offered PLAIN and the client never saw it
            assert client.select_folder("INBOX", readonly=True)[b"EXISTS"] == 3
        finally:
            close_imap(client)
        with pytest.raises(LoginRefused) as refused:
            open_imap(address, LoginPlan(login, Credentials(login, WRONG_USER_PASSWORD)))
        assert str(refused.value) == f"login {login} refused [AUTHENTICATIONFAILED]"
    finally:
        relay.listener.close()
