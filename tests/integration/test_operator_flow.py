"""The operator's job against the real Dovecot pair: finish sweeps, the credential vault, bulk files,
the post-migrate script and alias discovery, all through the shared migration flow."""

from __future__ import annotations

import json
import secrets
import stat
import textwrap
from pathlib import Path

import pytest
import trio

from console_fixtures import open_wired, serve_console
from copy_testbed import message_count, run_cli, secret_file
import testbed
from mailmigrator.ops.config import Config, load_config

pytestmark = pytest.mark.dovecot

_numbers = iter(range(1, 10_000))


def account(old: testbed.DovecotServer, password: str | None = None, messages: int = 4) -> tuple[str, str]:
    """A fresh user on the old server only, with a few INBOX messages."""
    login = f"op{next(_numbers)}-{secrets.token_hex(3)}@example.com"
    password = password or secrets.token_urlsafe(10)
    old.add_user(login, password)
    old.wait_for_user(login)
    testbed.seed_bulk(old, login, "INBOX", [testbed.make_message(f"{login}-{i}") for i in range(messages)])
    return login, password


def config_file(directory: Path, old: testbed.DovecotServer, new: testbed.DovecotServer, *,
                source: str = "", migration: str = "", target: str = "") -> Path:
    """A config with passwd-file provisioning on the new server."""
    master = secret_file(directory, "master.secret", new.master_password or "")
    path = directory / "mm.toml"
    path.write_text(textwrap.dedent(f"""\
        [store]
        url = "sqlite:///{directory / 'events.sqlite'}"
        [source]
        host = "127.0.0.1:{old.imap_port}"
        tls = "disable"
        login_format = "email"
        """) + source + textwrap.dedent(f"""
        [target]
        host = "127.0.0.1"
        port = {new.imap_port}
        tls = "disable"
        master_user = "{new.master_user}"
        master_password_file = "{master}"
        provisioning = "passwd-file"
        passwd_file = "{new.passwd_file}"
        """) + target + textwrap.dedent("""
        [migration]
        primary_domain = "example.com"
        while_copying = "notice"
        concurrency = 3
        """) + migration)
    return path


def events(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, config: Path, login: str) -> list[dict]:
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "history", login, "--json")
    assert code == 0, err
    return json.loads(out)


def migrate(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, config: Path, login: str,
            password: str) -> tuple[int, str, str]:
    return run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "migrate", "--user", login,
                   "--password-stdin")


def test_finish_sweeps_late_mail_once_then_destroys_the_credential(
    old_server: testbed.DovecotServer, new_server: testbed.DovecotServer, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = config_file(tmp_path, old_server, new_server)
    login, password = account(old_server)
    code, out, err = migrate(capsys, monkeypatch, config, login, password)
    assert code == 0, out + err
    assert message_count(new_server, login) == 4
    key = tmp_path / "credentials.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    testbed.seed_bulk(old_server, login, "INBOX", [testbed.make_message(f"{login}-late-{i}") for i in range(2)])
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "finish")
    assert code == 0, out + err
    assert "1 account(s) swept, 2 late message(s) copied" in out
    assert message_count(new_server, login) == 6
    names = [e["event"] for e in events(capsys, monkeypatch, config, login)]
    assert names[-2:] == ["FinishSwept", "CredentialDestroyed"]
    swept = [e for e in events(capsys, monkeypatch, config, login) if e["event"] == "FinishSwept"][0]
    assert swept["data"]["folders"] == {"INBOX": 2} and swept["data"]["messages"] == 2

    # Run again: the credential is gone and there is no admin login, so nothing is copied twice.
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "finish")
    assert code == 0, out + err
    assert "0 account(s) swept" in out and "password is destroyed" in out
    assert message_count(new_server, login) == 6
    code, out, _ = run_cli(capsys, monkeypatch, "", "--config", str(config), "status", "--json")
    status = json.loads(out)
    assert status["run"]["state"] == "finished"
    assert [a["state"] for a in status["accounts"] if a["login"] == login] == ["swept"]


def test_finish_with_admin_login_copies_only_what_is_new_each_time(
    old_server: testbed.DovecotServer, new_server: testbed.DovecotServer, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = secret_file(tmp_path, "admin.secret", old_server.master_password or "")
    config = config_file(tmp_path, old_server, new_server, source=(
        f'admin_user = "{old_server.master_user}"\nadmin_password_file = "{admin}"\nadmin_login = "dovecot-master"\n'))
    login, password = account(old_server)
    testbed.seed_bulk(old_server, login, "Archive", [testbed.make_message(f"{login}-arch-{i}") for i in range(3)])
    code, out, err = migrate(capsys, monkeypatch, config, login, password)
    assert code == 0, out + err
    assert not (tmp_path / "credentials.key").exists()  # the admin login needs no vault

    testbed.seed_bulk(old_server, login, "INBOX", [testbed.make_message(f"{login}-late-a")])
    testbed.seed_bulk(old_server, login, "Archive", [testbed.make_message(f"{login}-late-b")])
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "finish")
    assert code == 0 and "2 late message(s) copied" in out, out + err
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "finish")
    assert code == 0 and "0 late message(s) copied" in out, out + err
    testbed.seed_bulk(old_server, login, "INBOX", [testbed.make_message(f"{login}-late-c")])
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "finish")
    assert code == 0 and "1 late message(s) copied" in out, out + err
    assert message_count(new_server, login) == 4 + 3 + 3

    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "verify", login)
    assert code == 0, out + err
    swept = [e["data"] for e in events(capsys, monkeypatch, config, login) if e["event"] == "FinishSwept"]
    assert [s["messages"] for s in swept] == [2, 0, 1]


def test_bulk_file_migrates_good_lines_and_reports_bad_ones(
    old_server: testbed.DovecotServer, new_server: testbed.DovecotServer, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    alias_map = tmp_path / "virtual"
    config = config_file(tmp_path, old_server, new_server, target=f'alias_map = "{alias_map}"\n')
    first, first_pw = account(old_server)
    second, second_pw = account(old_server, messages=2)
    third, _ = account(old_server, messages=1)
    bulk = tmp_path / "users.txt"
    bulk.write_text(
        "# accounts to move now\n"
        f"{first}:{first_pw}\n"
        "\n"
        "nopassword-user\n"
        f"{second}:{second_pw}:sales@example.com\n"
        ":orphan-password\n"
        f"{third}:not-the-password\n"
        "someone@example.com:pw:bad@alias\n"
    )
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "migrate", "--bulk", str(bulk))
    assert code == 1
    assert "line 4: no password" in err and "line 6: empty user name" in err and "line 8: bad alias" in err
    rows = {line.split()[0]: line for line in out.splitlines() if "@" in line.split()[0]}
    assert rows[first].split()[1] == "ok" and rows[second].split()[1] == "ok"
    assert rows[third].split()[1] == "FAILED" and "refused the password" in rows[third]
    assert "2 migrated, 1 failed, 3 bad line(s) skipped" in out
    for secret in (first_pw, second_pw, "not-the-password", "orphan-password"):
        assert secret not in out + err
    assert message_count(new_server, first) == 4 and message_count(new_server, second) == 2
    assert alias_map.read_text() == f"sales@example.com  {second}\n"


SCRIPT = """#!/usr/bin/env python3
import json, sys, time
mode = {mode!r}
password = sys.stdin.readline().rstrip("\\n")
with open({record!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:] + [password]) + "\\n")
print("hello from the script for", sys.argv[1], "with", password)
if mode == "fail":
    sys.exit(3)
if mode == "hang":
    time.sleep(60)
"""


@pytest.mark.parametrize("mode", ["ok", "fail", "hang"])
def test_post_migrate_script_gets_the_password_intact_and_never_undoes_the_migration(
    mode: str, old_server: testbed.DovecotServer, new_server: testbed.DovecotServer, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    record = tmp_path / "calls.jsonl"
    script = tmp_path / "after.py"
    script.write_text(SCRIPT.format(mode=mode, record=str(record)))
    script.chmod(0o755)
    config = config_file(tmp_path, old_server, new_server, migration=(
        f'post_migrate_script = "{script}"\npost_migrate_timeout = 1.5\n'))
    password = f"""pa ss "q" 'x' $HOME ;{secrets.token_hex(3)}"""
    login, _ = account(old_server, password=password, messages=1)
    code, out, err = migrate(capsys, monkeypatch, config, login, password)
    assert code == 0, out + err
    assert json.loads(record.read_text()) == [login, password]
    ran = [e["data"] for e in events(capsys, monkeypatch, config, login) if e["event"] == "PostScriptRan"]
    assert len(ran) == 1
    assert ran[0]["exit_status"] == {"ok": 0, "fail": 3, "hang": -9}[mode]
    assert ran[0]["timed_out"] == (mode == "hang")
    if mode == "hang":
        assert ran[0]["duration_seconds"] < 5
    # The script's output reaches the structured log with the password cut out.
    assert "hello from the script" in err and "[redacted]" in err and password not in out + err
    code, out, _ = run_cli(capsys, monkeypatch, "", "--config", str(config), "show", login, "--json")
    shown = json.loads(out)
    assert shown["state"] == "completed" and shown["post_script"]["exit_status"] == ran[0]["exit_status"]


@pytest.mark.parametrize(("mode", "expected"), [
    ("username", ["boss@example.com"]),
    ("standard", ["boss@example.com", "info@example.com"]),
    ("extended", ["boss@example.com", "info@example.com", "sales@example.com", "team@example.com"]),
])
def test_access_modes_record_aliases_and_write_the_alias_map(
    mode: str, expected: list[str], old_server: testbed.DovecotServer, new_server: testbed.DovecotServer,
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    alias_map = tmp_path / "virtual"
    alias_map.write_text("# kept as it is\npostmaster@example.com  root@example.com\n")
    config = config_file(tmp_path, old_server, new_server, target=f'alias_map = "{alias_map}"\n',
                         migration=f'access_mode = "{mode}"\nuse_x_envelope_to = true\n')
    login, password = account(old_server, messages=0)
    mail = [
        testbed.make_message(f"{login}-1", to=["info@example.com"]),
        testbed.make_message(f"{login}-2", to=["info@example.com"], cc=["friend@other.example"]),
        testbed.make_message(f"{login}-3", to=["list@lists.example"], headers={"Delivered-To": "sales@example.com"}),
        testbed.make_message(f"{login}-4", to=["undisclosed@other.example"], headers={"X-Envelope-To": "team@example.com"}),
        # Two addresses of the domain in To: a colleague could be one of them, so neither counts.
        testbed.make_message(f"{login}-5", to=["colleague@example.com", "other@example.com"]),
    ]
    testbed.seed_bulk(old_server, login, "INBOX", mail)
    bulk = tmp_path / "one.txt"
    bulk.write_text(f"{login}:{password}:boss@example.com\n")
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "migrate", "--bulk", str(bulk))
    assert code == 0, out + err
    created = [e["data"] for e in events(capsys, monkeypatch, config, login) if e["event"] == "AccountCreated"]
    assert created[0]["aliases"] == expected
    lines = alias_map.read_text().splitlines()
    assert lines[:2] == ["# kept as it is", "postmaster@example.com  root@example.com"]
    assert sorted(lines[2:]) == [f"{alias}  {login}" for alias in expected]


def test_header_injected_aliases_are_reported_and_never_applied(
    old_server: testbed.DovecotServer, new_server: testbed.DovecotServer, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    alias_map = tmp_path / "virtual"
    before = ("# kept as it is\x85 even this\n"
              "ceo@example.com  chief@example.com\nboard@example.com  chief@example.com\n").encode()
    alias_map.write_bytes(before)
    log_file = tmp_path / "migration.log"
    config = config_file(tmp_path, old_server, new_server, target=f'alias_map = "{alias_map}"\n',
                         migration=f'access_mode = "extended"\nlog_file = "{log_file}"\n')
    colleague = f"colleague-{secrets.token_hex(3)}@example.com"
    new_server.add_user(colleague, secrets.token_urlsafe(10))
    login, password = account(old_server, messages=0)
    injected = [
        b"ceo@example.com",
        colleague.encode(),
        b"a\x1cb@example.com",
        b"<ceo\x85@example.com>",
        b"x\xe2\x80\xa8ceo@example.com",
        b"x@outside.example\x85y@example.com",
        b"sales@example.com",
    ]
    mail = [testbed.make_message(f"{login}-{i}", to=["list@lists.example"], headers={"Delivered-To": "PLACEHOLDER"})
            .replace(b"PLACEHOLDER", value) for i, value in enumerate(injected)]
    testbed.seed_bulk(old_server, login, "INBOX", mail)
    # The admin's own alias for the account goes through the same check.
    bulk = tmp_path / "one.txt"
    bulk.write_text(f"{login}:{password}:board@example.com\n")
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "migrate", "--bulk", str(bulk))
    assert code == 0, out + err

    assert alias_map.read_bytes() == before + f"sales@example.com  {login}\n".encode()
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "show", login, "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["aliases"] == ["sales@example.com"]
    conflicts = {c["address"]: c["reason"] for c in shown["alias_conflicts"]}
    assert conflicts["ceo@example.com"] == "already mapped to chief@example.com"
    assert conflicts[colleague] == "is an account"
    assert conflicts["board@example.com"] == "already mapped to chief@example.com"
    assert conflicts["a\\x1cb@example.com"] == "not a plain address"
    unplain = [a for a, reason in conflicts.items() if reason == "not a plain address"]
    assert len(unplain) == len(conflicts) - 3 >= 3
    assert all(a.isascii() and a.isprintable() for a in unplain)
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "show", login)
    assert code == 0 and "alias not applied:" in out and "ceo@example.com (already mapped to chief@example.com)" in out

    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "log")
    assert code == 0, err
    refused = [line for line in out.splitlines() if "NOT applied" in line]
    assert len(refused) == len(conflicts)
    assert any("alias ceo@example.com NOT applied: already mapped to chief@example.com" in line for line in refused)
    assert "alias ceo@example.com NOT applied" in log_file.read_text()

    detail = trio.run(console_account_detail, load_config(config), login)
    assert detail["alias_conflicts"] == shown["alias_conflicts"]


async def console_account_detail(config: Config, login: str) -> dict:
    wired = open_wired(config)
    try:
        async with serve_console(config, wired) as running, running.logged_in() as (client, _):
            response = await client.get(f"/api/accounts/{login}")
            assert response.status_code == 200, response.text
            return response.json()
    finally:
        wired.close()


def test_accounts_created_ahead_of_their_copy_are_copied_without_a_login_retry(
    old_server: testbed.DovecotServer, new_server: testbed.DovecotServer, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Six accounts at concurrency 3: the last three are created while the first copies run.
    config = config_file(tmp_path, old_server, new_server)
    users = [account(old_server, messages=2) for _ in range(6)]
    bulk = tmp_path / "users.txt"
    bulk.write_text("".join(f"{login}:{password}\n" for login, password in users))
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "migrate", "--bulk", str(bulk))
    assert code == 0, out + err
    logged = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [e for e in logged if e.get("event") in ("transient failure, retrying", "migration failed")] == []
    for login, _ in users:
        history = [e["event"] for e in events(capsys, monkeypatch, config, login)]
        assert "MigrationFailed" not in history, history
        assert history.count("AccountCreated") == 1 and history.count("MigrationStarted") == 1, history
        assert message_count(new_server, login) == 2
