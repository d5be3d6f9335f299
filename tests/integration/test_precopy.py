"""Pre-copy against the real Dovecot pair: roster accounts copied without passwords, then a first login switches."""

from __future__ import annotations

import imaplib
import time
from pathlib import Path

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

import testbed
import trio
from copy_testbed import message_count, run_cli, secret_file
from mailmigrator.ops.cli import main
from proxy_fixtures import OLD_PASSWORD, Pair, pair, write_config
from test_switch_over import serve_config
from testbed import make_message, seed_bulk
from mailmigrator.ops.config import load_config
from mailmigrator.ops.composition import open_store
from test_operator_flow import account, config_file, migrate

pytestmark = pytest.mark.dovecot
__all__ = ["pair"]


def admin_config(tmp_path: Path, old: testbed.DovecotServer, new: testbed.DovecotServer) -> Path:
    admin = secret_file(tmp_path, "admin.secret", old.master_password or "")
    return config_file(tmp_path, old, new, source=(
        f'admin_user = "{old.master_user}"\nadmin_password_file = "{admin}"\nadmin_login = "dovecot-master"\n'))


def put_on_roster(config: Path, logins: list[str]) -> None:
    wired = open_store(load_config(config), create=True)
    assert wired is not None
    try:
        wired.app.record_expected(logins, "test roster")
    finally:
        wired.close()


def refuses_every_password(new: testbed.DovecotServer, login: str, passwords: list[str]) -> bool:
    for password in passwords:
        client = IMAPClient(new.host, port=new.imap_port, ssl=False)
        try:
            client.login(login, password)
        except LoginError:
            continue
        finally:
            client.shutdown()
        return False
    return True


def test_precopy_all_copies_the_roster_without_passwords_then_a_first_login_switches_in_seconds(
    old_server: testbed.DovecotServer, new_server: testbed.DovecotServer, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = admin_config(tmp_path, old_server, new_server)
    users = [account(old_server, messages=3) for _ in range(9)]
    big, big_password = account(old_server, messages=2000)
    logins = [login for login, _ in users] + [big]
    put_on_roster(config, logins)

    started = time.monotonic()
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "precopy", "--all")
    full_copy = time.monotonic() - started
    assert code == 0, out + err
    assert "10 pre-copied, 0 skipped" in out, out
    assert all(message_count(new_server, login) == 3 for login, _ in users)
    assert message_count(new_server, big) == 2000
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "show", big, "--json")
    assert code == 0 and '"state": "precopied"' in out and '"password_pending": true' in out, out
    # Nobody can open a pre-copied account, not even with the old password.
    assert refuses_every_password(new_server, big, [big_password, "", "!", "{CRYPT}!"])

    # A refresh pass copies only the delta.
    testbed.seed_bulk(old_server, big, "INBOX", [testbed.make_message(f"{big}-late-{i}") for i in range(5)])
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "precopy", big)
    assert code == 0 and "1 pre-copied" in out, out + err
    assert message_count(new_server, big) == 2005

    # The first login: the password verified on the old server is set on the new account, then the switch.
    testbed.seed_bulk(old_server, big, "INBOX", [testbed.make_message(f"{big}-later")])
    started = time.monotonic()
    code, out, err = migrate(capsys, monkeypatch, config, big, big_password)
    switch = time.monotonic() - started
    assert code == 0, out + err
    assert switch < 10 and switch < full_copy, (switch, full_copy)
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "show", big, "--json")
    assert '"state": "completed"' in out and '"password_pending": false' in out, out
    with new_server.imap(big, big_password) as client:
        assert client.select_folder("INBOX")[b"EXISTS"] == 2006
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "verify", big)
    assert code == 0, out + err

    # The owners who never logged in: still nobody can open their accounts.
    never, never_password = users[0]
    assert refuses_every_password(new_server, never, [never_password, ""])
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "finish")
    assert code == 0, out + err
    waiting = out.split("pre-copied account(s) whose owner never logged in", 1)[1]
    assert out.count("9 pre-copied account(s)") == 1 and never in waiting and big not in waiting, out
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "show", never)
    assert "precopied_at:" in out and "password_pending:        True" in out, out


def test_precopy_needs_the_source_admin_login(
    old_server: testbed.DovecotServer, new_server: testbed.DovecotServer, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = config_file(tmp_path, old_server, new_server)
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "precopy", "--all")
    assert code == 2 and "[source] admin_user" in err and "Traceback" not in err, err


@pytest.mark.trio
async def test_a_first_login_through_the_proxy_lands_a_precopied_user_on_the_new_server_in_seconds(
    pair: Pair, tmp_path: Path,
) -> None:
    login = "early-bird@example.com"
    pair.old.add_user(login, OLD_PASSWORD)
    pair.old.wait_for_user(login)
    seed_bulk(pair.old, login, "INBOX", [make_message(f"{login}-{i}") for i in range(2000)])
    path = write_config(tmp_path, pair, tls=False, migration_account="", while_copying="notice")
    admin = secret_file(tmp_path, "admin.secret", pair.old.master_password or "")
    path.write_text(path.read_text().replace(
        "[source]\n", f'[source]\nadmin_user = "{pair.old.master_user}"\nadmin_password_file = "{admin}"\n'
                      'admin_login = "dovecot-master"\n', 1))
    put_on_roster(path, [login])
    assert await trio.to_thread.run_sync(main, ["--config", str(path), "precopy", "--all"]) == 0
    seed_bulk(pair.old, login, "INBOX", [make_message(f"{login}-late")])

    async with trio.open_nursery() as nursery:
        service, port, _ = await serve_config(path, nursery)

        def first_login() -> tuple[float, int, list[str]]:
            started = time.monotonic()
            client = imaplib.IMAP4("127.0.0.1", port, timeout=60)
            client.login(login, OLD_PASSWORD)
            took = time.monotonic() - started
            typ, data = client.select("INBOX")
            relayed = service.proxy.old_relays.open_logins()
            client.logout()
            return took, int(data[0] or 0), relayed

        took, count, relayed = await trio.to_thread.run_sync(first_login)
        state = service.app.account(login).state
        nursery.cancel_scope.cancel()
    assert state == "completed"
    assert count == 2001 and relayed == []  # the new server answered, with every message
    assert took < 10, took
    print(f"first login of a pre-copied 2,001-message account answered in {took:.2f} s")
    assert message_count(pair.new, login) == 2001
