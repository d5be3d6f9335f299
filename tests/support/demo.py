"""The demo behind `bash ops/demo`: a disposable old and new Dovecot on loopback, `serve` on the SQLite default,
users logging in through the proxy, `finish`, then `status`, the migration log and `verify`.

Needs root (the test bed runs Dovecot with a private mail user) and Dovecot installed.
Everything lives in a temporary directory that is removed at the end; no Dovecot is left running.
"""

from __future__ import annotations

import imaplib
import json
import poplib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from testbed import DovecotServer, make_message, make_new_server, make_old_server, seed_bulk

USERS = {"ann@example.com": "Ann's old pw 1", "cat@example.com": "cat-pop3-pw"}
NOTICE = "notice@example.com"
MAILMIGRATOR = [sys.executable, "-c", "import sys; from mailmigrator.ops.cli import main; sys.exit(main())"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}")
        time.sleep(0.2)


def _say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


class Demo:
    def __init__(self, work: Path, old: DovecotServer, new: DovecotServer) -> None:
        self.work = work
        self.old = old
        self.new = new
        self.config = work / "mailmigrator.toml"
        self.imap_port, self.pop3_port = _free_port(), _free_port()

    def mm(self, *args: str, stdin: str = "", show: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*MAILMIGRATOR, "--config", str(self.config), *args],
            input=stdin, capture_output=True, text=True, timeout=120,
        )
        if show:
            print(f"$ mailmigrator {' '.join(args)}", flush=True)
            print(done.stdout.rstrip(), flush=True)
            if done.returncode != 0:
                print(f"(exit {done.returncode}) {done.stderr.strip().splitlines()[-1:]}", flush=True)
        return done

    def write_config(self) -> None:
        master = self.work / "master.secret"
        master.write_text(self.new.master_password or "")
        master.chmod(0o600)
        self.config.write_text(
            "# No [store]: the SQLite default, mailmigrator.sqlite beside this file.\n"
            f'[source]\nhost = "127.0.0.1"\nimap_port = {self.old.imap_port}\npop3_port = {self.old.pop3_port}\n'
            'tls = "disable"\nprotocol = "both"\nlogin_format = "email"\n'
            f'[target]\nhost = "127.0.0.1"\nport = {self.new.imap_port}\ntls = "disable"\n'
            f'master_user = "{self.new.master_user}"\nmaster_password_file = "{master}"\n'
            f'pop3_port = {self.new.pop3_port}\nprovisioning = "passwd-file"\npasswd_file = "{self.new.passwd_file}"\n'
            f'alias_map = "{self.work / "virtual"}"\n'
            f'[proxy]\nimap = ["127.0.0.1:{self.imap_port}"]\npop3 = ["127.0.0.1:{self.pop3_port}"]\n'
            f'[migration]\nmigration_account = "{NOTICE}"\nwhile_copying = "notice"\nprimary_domain = "example.com"\n'
            'access_mode = "extended"\nlog_file = "migration.log"\nconcurrency = 4\n'
        )

    def seed(self) -> None:
        self.old.add_users({**USERS, "ben@example.com": "ben-right-pw"})
        seed_bulk(self.old, "ann@example.com", "INBOX",
                  [make_message(f"ann-{i}", to=["sales@example.com"], body="hello " * 800) for i in range(400)])
        seed_bulk(self.old, "ann@example.com", "Archive/2023", [make_message(f"ann-a{i}") for i in range(20)])
        seed_bulk(self.old, "cat@example.com", "INBOX", [make_message(f"cat-{i}", to=["cat@example.com"]) for i in range(15)])
        self.new.add_user(NOTICE, "not-used-by-anyone")
        seed_bulk(self.new, NOTICE, "INBOX", [make_message("notice", subject="Your mailbox is being moved")])

    def state(self, login: str) -> str | None:
        out = self.mm("status", "--json", show=False).stdout
        states = [a["state"] for a in json.loads(out or "{}").get("accounts", []) if a["login"] == login]
        return states[0] if states else None

    def run(self) -> None:
        self.write_config()
        self.seed()
        self.mm("start")
        serve_log = self.work / "serve.log"
        with serve_log.open("wb") as err:
            serve = subprocess.Popen([*MAILMIGRATOR, "--config", str(self.config), "serve"], stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        try:
            _wait(lambda: b'"ready"' in serve_log.read_bytes() or serve.poll() is not None, "serve to start")
            if serve.poll() is not None:
                raise SystemExit(f"demo: serve stopped:\n{serve_log.read_text()}")
            self.logins()
            _say("finish: complete what is pending, sweep mail that arrived on the old server meanwhile")
            seed_bulk(self.old, "ann@example.com", "INBOX", [make_message("ann-late", subject="Arrived late")])
            self.mm("finish")
            _say("status")
            self.mm("status")
            _say("the migration log")
            self.mm("log")
            _say("verify: old and new mailbox compared")
            self.mm("verify", "ann@example.com", "--password-stdin", stdin=USERS["ann@example.com"] + "\n")
            _say("alias map written (access_mode = extended)")
            print((self.work / "virtual").read_text().rstrip() or "(empty)")
        finally:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(20)
            except subprocess.TimeoutExpired:
                serve.kill()
        print(f"\nserve stopped (exit {serve.returncode})", flush=True)

    def logins(self) -> None:
        _say("ann logs in through the proxy (IMAP): her migration starts, she sees the notice meanwhile")
        client = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=20)
        client.login("ann@example.com", USERS["ann@example.com"])
        client.select("INBOX", readonly=True)
        _, fetched = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        print("ann's INBOX shows:", bytes(fetched[0][1]).decode().strip())  # type: ignore[index]
        client.logout()

        _say("ben, whom the store does not know yet, types a wrong password: refused and counted, nothing recorded")
        client = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=20)
        try:
            client.login("ben@example.com", "not-bens-password")
        except imaplib.IMAP4.error as e:
            print("ben gets:", e)
        client.logout()

        _say("cat logs in with POP3: migrated too")
        pop = poplib.POP3("127.0.0.1", self.pop3_port, timeout=20)
        pop.user("cat@example.com")
        try:
            pop.pass_(USERS["cat@example.com"])
            print("cat's POP3 mailbox while copying:", pop.stat()[0], "message(s) (the notice)")
        except poplib.error_proto as e:
            print("cat gets, while her mail is copied:", e.args[0].decode())
        pop.quit()

        for login in USERS:
            _wait(lambda login=login: self.state(login) == "completed", f"{login} to be migrated")  # type: ignore[misc]
        _say("after the copy, the same logins reach the new server")
        client = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=20)
        client.login("ann@example.com", USERS["ann@example.com"])
        _, selected = client.select("INBOX", readonly=True)
        print("ann's INBOX on the new server:", bytes(selected[0] or b"?").decode(), "messages")
        client.logout()
        pop = poplib.POP3("127.0.0.1", self.pop3_port, timeout=20)
        pop.user("cat@example.com")
        pop.pass_(USERS["cat@example.com"])
        print("cat's POP3 mailbox on the new server:", pop.stat()[0], "messages")
        pop.quit()


def main() -> int:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="mailmigrator-demo-"))
    try:
        old = make_old_server(work / "old")
        new = make_new_server(work / "new", pop3=True)
        with old, new:
            Demo(work, old, new).run()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ndemo done in {time.monotonic() - started:.0f} s; Dovecot stopped, {work} removed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
