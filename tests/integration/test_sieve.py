"""Sieve scripts move with the mail over ManageSieve, against the real Dovecot pair (the new one lacks imap4flags)."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

import testbed
from copy_testbed import message_count, new_user, run_cli, started, write_config
from mailmigrator.adapters.mail.connection import LoginPlan, ServerAddress
from mailmigrator.adapters.sieve.connection import ManageSieve
from mailmigrator.domain.credentials import Credentials

pytestmark = pytest.mark.dovecot

MAIN = b'require "fileinto";\r\nif header :contains "subject" "invoice" { fileinto "INBOX"; }\r\n# marker-main-7f3a\r\n'
SPARE = b'# marker-spare-19c2\r\nkeep;\r\n'
FLAGS = b'require "imap4flags";\r\naddflag "\\\\Flagged";\r\nkeep;\r\n'
VACATION = (b'require "vacation";\r\n'
            b'vacation :days 1 :subject "Away" :addresses ["%s"] "I am away.";\r\n')


@dataclass
class SmtpRecorder:
    """A loopback SMTP server that accepts every message and remembers each envelope: where replies would go."""

    messages: list[tuple[str, list[str]]] = field(default_factory=list)
    listener: socket.socket = field(default_factory=lambda: socket.create_server(("127.0.0.1", 0)))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listener.getsockname()[1]}"

    def start(self) -> SmtpRecorder:
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b"220 recorder ESMTP\r\n")
            sender, recipients = "", []
            for raw in lines:
                verb = raw[:4].upper()
                if verb == b"DATA":
                    conn.sendall(b"354 go on\r\n")
                    for body_line in lines:
                        if body_line == b".\r\n":
                            break
                    self.messages.append((sender, recipients))
                    conn.sendall(b"250 stored\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    if verb == b"MAIL":
                        sender = raw.decode(errors="replace").strip()
                    elif verb == b"RCPT":
                        recipients.append(raw.decode(errors="replace").strip())
                    conn.sendall(b"250 ok\r\n")


@dataclass
class SievePair:
    old: testbed.DovecotServer
    new: testbed.DovecotServer
    replies: SmtpRecorder


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SievePair]:
    """An old and a new Dovecot with ManageSieve; the new one sends Sieve's replies to an SMTP recorder."""
    base = tmp_path_factory.mktemp("sieve-pair")
    ca = trustme.CA()
    replies = SmtpRecorder().start()
    with started(testbed.make_old_server(base / "old", ca)) as old, \
            started(testbed.make_new_server(base / "new", ca, submission_host=replies.address)) as new:
        yield SievePair(old, new, replies)
    replies.listener.close()


def sieve_config(directory: Path, pair: SievePair, *, source_port: int | None = None) -> Path:
    path = write_config(directory, pair.old, pair.new,
                        source=f"managesieve_port = {source_port or pair.old.managesieve_port}\n")
    path.write_text(path.read_text().replace("[target]\n", f"[target]\nmanagesieve_port = "
                                             f"{pair.new.managesieve_port}\n", 1))
    return path


def old_sieve(pair: SievePair, login: str, password: str) -> ManageSieve:
    """The user's own ManageSieve session on the old server, STARTTLS against the test CA."""
    address = ServerAddress("127.0.0.1", pair.old.managesieve_port or 0, "detect", pair.old.ca_pem)
    return ManageSieve(address, LoginPlan(login, Credentials(login, password)))


def new_sieve(pair: SievePair, login: str) -> ManageSieve:
    address = ServerAddress("127.0.0.1", pair.new.managesieve_port or 0, "detect", pair.new.ca_pem)
    master = Credentials(pair.new.master_user or "", pair.new.master_password or "")
    return ManageSieve(address, LoginPlan(login, master, "sasl"))


def seed_scripts(pair: SievePair, login: str, password: str, scripts: dict[str, bytes], active: str) -> None:
    with old_sieve(pair, login, password) as old:
        for name, content in scripts.items():
            assert old.put_script(name, content).ok
        old.set_active(active)


def scripts_on_disk(server: testbed.DovecotServer, login: str) -> tuple[dict[str, bytes], str]:
    """The new server's script files of `login` and the active one, read from its storage, not over ManageSieve."""
    home = server.mail_root / login
    scripts = {p.name.removesuffix(".sieve"): p.read_bytes() for p in (home / "sieve").glob("*.sieve")}
    link = home / ".dovecot.sieve"
    active = Path(str(link.readlink())).name.removesuffix(".sieve") if link.is_symlink() else ""
    return scripts, active


def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, config: Path, stdin: str,
        *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, monkeypatch, stdin, "--config", str(config), *args)


def history(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, config: Path,
            login: str) -> list[dict]:
    code, out, err = cli(capsys, monkeypatch, config, "", "history", login, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("while_copying", ["notice", "old-server"])
def test_two_scripts_move_and_the_active_one_stays_active(
    pair: SievePair, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    while_copying: str,
) -> None:
    login, password = new_user(pair.old, pair.new)
    seed_scripts(pair, login, password, {"main": MAIN, "Zwei ü": SPARE}, active="main")
    config = sieve_config(tmp_path, pair)
    config.write_text(config.read_text().replace('while_copying = "notice"', f'while_copying = "{while_copying}"'))

    code, out, err = cli(capsys, monkeypatch, config, password + "\n", "migrate", "--user", login,
                         "--password-stdin")
    assert code == 0, out + err

    assert scripts_on_disk(pair.new, login) == ({"main": MAIN, "Zwei ü": SPARE}, "main")
    events = history(capsys, monkeypatch, config, login)
    moved = [e["data"] for e in events if e["event"] == "FiltersCopied"]
    assert len(moved) == 1, [e["event"] for e in events]
    assert sorted(s["name"] for s in moved[0]["scripts"]) == ["Zwei ü", "main"]
    assert {s["name"]: s["bytes"] for s in moved[0]["scripts"]} == {"main": len(MAIN), "Zwei ü": len(SPARE)}
    assert moved[0]["active"] == moved[0]["old_active"] == "main" and moved[0]["refused"] == []
    assert "marker-main" not in json.dumps(events) and "marker-spare" not in json.dumps(events)
    names = [e["event"] for e in events]
    if while_copying == "old-server":
        # The scripts move in the switch, after the user's old sessions are closed.
        assert names.index("SwitchStarted") < names.index("FiltersCopied") < names.index("SwitchedOver")

    code, out, err = cli(capsys, monkeypatch, config, "", "show", login)
    assert "2 script(s) moved, active: main" in out
    code, out, err = cli(capsys, monkeypatch, config, password + "\n", "verify", login, "--password-stdin")
    assert code == 0, out + err


def test_check_login_lists_the_scripts_that_will_move_and_the_active_one(
    pair: SievePair, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    login, password = new_user(pair.old, pair.new)
    seed_scripts(pair, login, password, {"main": MAIN, "Zwei ü": SPARE}, active="main")
    config = sieve_config(tmp_path, pair)
    code, out, err = cli(capsys, monkeypatch, config, password + "\n", "check", login, "--password-stdin", "--json")
    rows = {row["item"]: row for row in json.loads(out)["rows"]}
    assert rows["sieve script main"]["detail"] == f"{len(MAIN)} bytes; active", out
    assert rows["sieve script Zwei ü"]["detail"] == f"{len(SPARE)} bytes", out
    assert rows["sieve script main"]["ok"] and rows["sieve script Zwei ü"]["ok"]
    assert scripts_on_disk(pair.new, login) == ({}, ""), "check wrote to the new server"


def test_a_script_the_new_server_refuses_is_reported_with_its_reason_and_the_rest_moves(
    pair: SievePair, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    login, password = new_user(pair.old, pair.new)
    seed_scripts(pair, login, password, {"flags": FLAGS, "spare": SPARE}, active="flags")
    config = sieve_config(tmp_path, pair)

    code, out, err = cli(capsys, monkeypatch, config, password + "\n", "migrate", "--user", login,
                         "--password-stdin")
    assert code == 0, out + err

    # The refused script was the active one: nothing is made active in its place.
    assert scripts_on_disk(pair.new, login) == ({"spare": SPARE}, "")
    moved = next(e["data"] for e in history(capsys, monkeypatch, config, login) if e["event"] == "FiltersCopied")
    assert [s["name"] for s in moved["scripts"]] == ["spare"]
    assert [r["name"] for r in moved["refused"]] == ["flags"]
    assert "unknown Sieve capability `imap4flags'" in moved["refused"][0]["reason"]
    assert moved["old_active"] == "flags" and moved["active"] == ""
    _, out, _ = cli(capsys, monkeypatch, config, "", "show", login)
    refused = [line for line in out.splitlines() if line.startswith("sieve script refused:")]
    assert len(refused) == 1 and "flags (" in refused[0] and "imap4flags" in refused[0], out
    _, out, _ = cli(capsys, monkeypatch, config, "", "log")
    assert 'sieve script "flags" NOT moved: the new server refused it:' in out
    assert 'NONE active: "flags", active on the old server, was refused' in out
    # verify names what did not arrive.
    code, out, _ = cli(capsys, monkeypatch, config, password + "\n", "verify", login, "--password-stdin")
    assert code == 1 and "sieve script 'flags': missing on the new server" in out


def test_verify_sees_a_script_changed_on_the_new_server(
    pair: SievePair, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    login, password = new_user(pair.old, pair.new)
    seed_scripts(pair, login, password, {"main": MAIN}, active="main")
    config = sieve_config(tmp_path, pair)
    code, out, err = cli(capsys, monkeypatch, config, password + "\n", "migrate", "--user", login,
                         "--password-stdin")
    assert code == 0, out + err
    code, out, err = cli(capsys, monkeypatch, config, password + "\n", "verify", login, "--password-stdin")
    assert code == 0, out + err

    with new_sieve(pair, login) as new:
        assert new.put_script("main", MAIN + b"# edited\r\n").ok
    code, out, err = cli(capsys, monkeypatch, config, password + "\n", "verify", login, "--password-stdin")
    assert code == 1
    assert "sieve script 'main': content differs" in out


def test_an_old_server_without_managesieve_is_recorded_and_the_mail_still_moves(
    pair: SievePair, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    login, password = new_user(pair.old, pair.new)
    testbed.seed_bulk(pair.old, login, "INBOX", [testbed.make_message(f"{login}-{i}") for i in range(3)])
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    config = sieve_config(tmp_path, pair, source_port=port)
    code, out, err = cli(capsys, monkeypatch, config, password + "\n", "migrate", "--user", login,
                         "--password-stdin")
    assert code == 0, out + err
    assert message_count(pair.new, login) == 3
    left = [e["data"] for e in history(capsys, monkeypatch, config, login) if e["event"] == "FiltersNotCopied"]
    assert len(left) == 1 and "the old server does not offer ManageSieve" in left[0]["reason"]


def test_copied_mail_sends_no_vacation_reply_though_delivery_would(
    pair: SievePair, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    login, password = new_user(pair.old, pair.new)
    seed_scripts(pair, login, password, {"away": VACATION % login.encode()}, active="away")
    mail = [testbed.make_message(f"{login}-{i}", sender="Carol <carol@example.org>", to=(login,))
            for i in range(5)]
    testbed.seed_bulk(pair.old, login, "INBOX", mail)
    before = len(pair.replies.messages)

    code, out, err = cli(capsys, monkeypatch, config := sieve_config(tmp_path, pair), password + "\n", "migrate",
                         "--user", login, "--password-stdin")
    assert code == 0, out + err
    assert message_count(pair.new, login) == 5
    assert scripts_on_disk(pair.new, login)[1] == "away", "the vacation script was active during the copy"
    assert pair.replies.messages[before:] == [], "APPEND ran no Sieve: no vacation reply for copied mail"
    assert config.exists()

    # The control: a delivery to the new server runs the same script and its reply reaches the recorder.
    delivery = subprocess.run(
        ["/usr/lib/dovecot/dovecot-lda", "-c", str(pair.new.config_path), "-d", login, "-f", "dave@example.org"],
        input=testbed.make_message(f"{login}-delivered", sender="Dave <dave@example.org>", to=(login,)),
        capture_output=True, timeout=30,
    )
    assert delivery.returncode == 0, delivery.stderr.decode(errors="replace") + pair.new.log_tail()
    replies = pair.replies.messages[before:]
    assert len(replies) == 1 and "dave@example.org" in replies[0][1][0], replies


def test_with_the_dovecot_engine_the_scripts_move_once(
    pair: SievePair, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    login, password = new_user(pair.old, pair.new)
    seed_scripts(pair, login, password, {"main": MAIN, "spare": SPARE}, active="main")
    testbed.seed_bulk(pair.old, login, "INBOX", [testbed.make_message(f"{login}-{i}") for i in range(2)])
    # imapc speaks plain in the chrooted test bed (see test_dovecot_engine); ManageSieve follows the same tls.
    config = write_config(tmp_path, pair.old, pair.new, tls="disable",
                          source=f"managesieve_port = {pair.old.managesieve_port}\n")
    config.write_text(config.read_text().replace(
        "[target]\n", f'[target]\nengine = "dovecot"\ndoveadm_config = "{pair.new.config_path}"\n'
                      f"managesieve_port = {pair.new.managesieve_port}\n", 1))
    code, out, err = cli(capsys, monkeypatch, config, password + "\n", "migrate", "--user", login,
                         "--password-stdin")
    assert code == 0, out + err
    events = history(capsys, monkeypatch, config, login)
    assert next(e for e in events if e["event"] == "MigrationStarted")["data"]["engine"] == "dovecot"
    assert [e["event"] for e in events].count("FiltersCopied") == 1
    # dsync over imapc brings no scripts of its own: exactly what ManageSieve put there.
    assert scripts_on_disk(pair.new, login) == ({"main": MAIN, "spare": SPARE}, "main")
    assert message_count(pair.new, login) == 2
