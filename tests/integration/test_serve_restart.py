"""`mailmigrator serve` as a real process: killed mid-copy it resumes from the vault after a restart;
a known password appears nowhere after a whole proxy migration and finish; `notice` fills the notice INBOX."""

from __future__ import annotations

import imaplib
import json
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from copy_testbed import FaultyRelay, message_count, run_cli, secret_file
import testbed

pytestmark = pytest.mark.dovecot

MESSAGES = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def start_serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return subprocess.Popen(
            [sys.executable, "-c", "import sys; from mailmigrator.ops.cli import main; sys.exit(main())",
             "--config", str(config), "serve"], stdin=subprocess.DEVNULL, stdout=err, stderr=err)


def config_text(tmp: Path, old_imap_port: int, old: testbed.DovecotServer, new: testbed.DovecotServer,
                proxy_port: int, notice: str = "", while_copying: str = "notice", target: str = "") -> str:
    """A config for `serve` against the pair, the copy reading the old server at `old_imap_port`;
    `target` adds lines to the [target] table."""
    master = secret_file(tmp, "master.secret", new.master_password or "")
    return (
        f'[store]\nurl = "sqlite:///{tmp / "events.sqlite"}"\n'
        f'[source]\nhost = "127.0.0.1"\nimap_port = {old_imap_port}\npop3_port = {old.pop3_port}\n'
        f'tls = "disable"\nlogin_format = "email"\n'
        f'[target]\n{target}host = "127.0.0.1"\nport = {new.imap_port}\ntls = "disable"\n'
        f'master_user = "{new.master_user}"\n'
        f'master_password_file = "{master}"\nprovisioning = "passwd-file"\npasswd_file = "{new.passwd_file}"\n'
        f'[proxy]\nimap = ["127.0.0.1:{proxy_port}"]\n'
        f'[migration]\nprimary_domain = "example.com"\nmigration_account = "{notice}"\n'
        f'log_file = "{tmp / "migration.log"}"\nconcurrency = 2\nwhile_copying = "{while_copying}"\n'
    )


def account_state(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, config: Path,
                  login: str) -> str | None:
    code, out, _ = run_cli(capsys, monkeypatch, "", "--config", str(config), "status", "--json")
    assert code == 0
    states = [a["state"] for a in json.loads(out)["accounts"] if a["login"] == login]
    return states[0] if states else None


def test_serve_killed_mid_copy_resumes_after_restart_and_no_password_leaks(
    old_server: testbed.DovecotServer, new_server: testbed.DovecotServer, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    password = f"Leak-Canary {secrets.token_hex(6)} \"q\""
    login = f"restart-{secrets.token_hex(3)}@example.com"
    old_server.add_user(login, password)
    old_server.wait_for_user(login)
    body = "x" * 5000
    testbed.seed_bulk(old_server, login, "INBOX",
                      [testbed.make_message(f"{login}-{i}", body=body) for i in range(MESSAGES)])
    proxy_port = free_port()
    config = tmp_path / "mm.toml"
    serve_log = tmp_path / "serve.stderr"
    # The copy reads the old server through a slow relay, so it takes seconds and can be killed midway.
    with FaultyRelay(("127.0.0.1", old_server.imap_port), bytes_per_second=400_000) as relay:
        config.write_text(config_text(tmp_path, relay.port, old_server, new_server, proxy_port))
        code, _, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "start")
        assert code == 0, err
        serve = start_serve(config, serve_log)
        try:
            wait_for(lambda: b'"ready"' in serve_log.read_bytes() or serve.poll() is not None, "serve to be ready")
            assert serve.poll() is None, serve_log.read_text()
            client = imaplib.IMAP4("127.0.0.1", proxy_port, timeout=20)
            with pytest.raises(imaplib.IMAP4.error, match="Migration in progress"):
                client.login(login, password)
            client.logout()

            def copied_some() -> bool:
                code, out, _ = run_cli(capsys, monkeypatch, "", "--config", str(config), "show", login, "--json")
                return code == 0 and 0 < json.loads(out)["messages"] < MESSAGES

            wait_for(copied_some, "a first checkpoint")
        finally:
            serve.send_signal(signal.SIGKILL)
            serve.wait(10)
        assert account_state(capsys, monkeypatch, config, login) == "copying"

        serve = start_serve(config, serve_log)
        try:
            wait_for(lambda: account_state(capsys, monkeypatch, config, login) == "completed",
                     "the resumed copy to complete", timeout=120)
        finally:
            serve.send_signal(signal.SIGTERM)
            assert serve.wait(20) == 0, serve_log.read_text()[-3000:]

    # From here on straight to the old server.
    config.write_text(config_text(tmp_path, old_server.imap_port, old_server, new_server, proxy_port))
    log_text = serve_log.read_text()
    assert "resumed" in log_text
    assert message_count(new_server, login) == MESSAGES  # zero duplicates
    code, out, err = run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "verify", login,
                             "--password-stdin")
    assert code == 0, out + err
    code, _, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "history", login, "--json")
    started = [e for e in json.loads(_) if e["event"] == "MigrationStarted"]
    assert len(started) >= 2  # the copy really was resumed, not started over elsewhere

    # Finish sweeps with the vault's password, then destroys it.
    testbed.seed_bulk(old_server, login, "INBOX", [testbed.make_message(f"{login}-late")])
    code, finish_out, finish_err = run_cli(capsys, monkeypatch, "", "--config", str(config), "finish")
    assert code == 0 and "1 late message(s) copied" in finish_out, finish_out + finish_err
    assert message_count(new_server, login) == MESSAGES + 1

    # The password appears in none of: the store, the projections, the log file, the structured logs.
    _, status_json, _ = run_cli(capsys, monkeypatch, "", "--config", str(config), "status", "--json")
    _, show_json, _ = run_cli(capsys, monkeypatch, "", "--config", str(config), "show", login, "--json")
    _, history_json, _ = run_cli(capsys, monkeypatch, "", "--config", str(config), "history", login, "--json")
    _, log_out, _ = run_cli(capsys, monkeypatch, "", "--config", str(config), "log")
    assert "stored password destroyed" in log_out
    store_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("events.sqlite*"))
    for where, text in {
        "store": store_bytes, "status --json": status_json.encode(), "show --json": show_json.encode(),
        "history": history_json.encode(), "log": log_out.encode(),
        "log file": (tmp_path / "migration.log").read_bytes(), "serve stderr": serve_log.read_bytes(),
        "finish output": (finish_out + finish_err).encode(),
    }.items():
        for needle in (password, password.split()[1]):
            assert needle.encode() not in text, f"the password leaked into {where}"


def test_notice_command_puts_the_message_into_the_migration_account(
    old_server: testbed.DovecotServer, new_server: testbed.DovecotServer, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    notice = f"notice-{secrets.token_hex(3)}@example.com"
    new_server.add_user(notice, secrets.token_urlsafe(8))
    new_server.wait_for_user(notice)
    config = tmp_path / "mm.toml"
    config.write_text(config_text(tmp_path, old_server.imap_port, old_server, new_server, free_port(), notice))
    eml = tmp_path / "notice.eml"
    for round_ in (1, 2):
        eml.write_text(f"From: IT <it@example.com>\nSubject: Your mailbox is moving ({round_})\n\n"
                       "Your mail is being copied. Log in again in a few minutes.\n")
        code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "notice", str(eml))
        assert code == 0, out + err
        assert f"({round_ - 1} older message(s) replaced)" in out
    with new_server.imap(notice) as client:
        client.select_folder("INBOX")
        uids = client.search("ALL")
        subjects = [data[b"BODY[HEADER.FIELDS (SUBJECT)]"] for data in client.fetch(
            uids, ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]).values()]
    assert len(uids) == 1 and b"moving (2)" in subjects[0]
    code, _, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "notice", str(tmp_path / "none.eml"))
    assert code == 1 and "none.eml" in err
