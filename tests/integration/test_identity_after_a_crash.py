"""`serve` with the Dovecot engine, killed with SIGKILL mid-copy and mid-switch while the user works on the old
server: after a restart the account completes, `verify` finds it equal, no message is there twice, and every
folder keeps the old UIDVALIDITY and UIDs."""

from __future__ import annotations

import imaplib
import json
import secrets
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

import testbed
from copy_testbed import FaultyRelay, message_count, run_cli
from test_dovecot_engine import identities
from test_serve_restart import account_state, config_text, free_port, start_serve, wait_for
from testbed import make_message, seed_bulk

pytestmark = pytest.mark.dovecot

BODY = "x" * 5000
# Both passes read the old server through this slow link, so that each takes seconds.
OLD_SIDE_BYTES_PER_SECOND = 400_000


class Migration:
    """One account of the Dovecot pair, migrated in old-server mode by `serve` subprocesses."""

    def __init__(self, tmp: Path, old: testbed.DovecotServer, new: testbed.DovecotServer,
                 capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        self.old, self.new, self.tmp = old, new, tmp
        self.capsys, self.monkeypatch = capsys, monkeypatch
        self.login = f"crash-{secrets.token_hex(3)}@example.com"
        self.password = secrets.token_urlsafe(10)
        self.config, self.serve_log, self.proxy_port = tmp / "mm.toml", tmp / "serve.stderr", free_port()
        old.add_user(self.login, self.password)
        old.wait_for_user(self.login)

    def configure(self, old_imap_port: int) -> None:
        # The test bed's chrooted Dovecot cannot load imapc's TLS module: the source is plain (tls = "disable").
        target = f'engine = "dovecot"\ndoveadm_config = "{self.new.config_path}"\n'
        self.config.write_text(config_text(self.tmp, old_imap_port, self.old, self.new, self.proxy_port,
                                           while_copying="old-server", target=target))

    def cli(self, *args: str, stdin: str = "") -> tuple[int, str, str]:
        return run_cli(self.capsys, self.monkeypatch, stdin, "--config", str(self.config), *args)

    def events(self) -> list[str]:
        return [e["event"] for e in json.loads(self.cli("history", self.login, "--json")[1])]

    def state(self) -> str | None:
        return account_state(self.capsys, self.monkeypatch, self.config, self.login)

    def serve(self) -> subprocess.Popen[bytes]:
        serve = start_serve(self.config, self.serve_log)
        wait_for(lambda: b'"ready"' in self.serve_log.read_bytes() or serve.poll() is not None, "serve to be ready")
        assert serve.poll() is None, self.serve_log.read_text()[-3000:]
        return serve

    def kill_serve_when(self, moment: Callable[[], None]) -> None:
        """`serve`, the user's first login through it (which starts the copy), then SIGKILL once `moment` returns."""
        assert self.cli("start")[0] == 0
        serve = self.serve()
        try:
            client = imaplib.IMAP4("127.0.0.1", self.proxy_port, timeout=30)
            client.login(self.login, self.password)
            assert int(client.select("INBOX")[1][0]) > 0, "the user works on the old server"
            moment()
        finally:
            serve.send_signal(signal.SIGKILL)
            serve.wait(10)

    def crash_and_restart(self, moment: Callable[[], None], killed_in: str,
                          bytes_per_second: float = OLD_SIDE_BYTES_PER_SECOND) -> None:
        """Through the slow link: `serve` killed once `moment` returns (the account then `killed_in`), restarted
        until the account is completed."""
        with FaultyRelay(("127.0.0.1", self.old.imap_port), bytes_per_second=bytes_per_second) as relay:
            self.configure(relay.port)
            self.kill_serve_when(moment)
            assert self.state() == killed_in, f"killed while {killed_in}"
            self.restart_until_completed()

    def restart_until_completed(self) -> None:
        serve = self.serve()
        try:
            wait_for(lambda: self.state() == "completed", "the restarted serve to complete the account", 180)
        finally:
            serve.send_signal(signal.SIGTERM)
            assert serve.wait(20) == 0, self.serve_log.read_text()[-3000:]

    def assert_equal_without_duplicates_and_identity_held(self) -> None:
        self.configure(self.old.imap_port)  # from here on straight to the old server
        code, out, err = self.cli("verify", self.login, "--password-stdin", stdin=self.password + "\n")
        assert code == 0, out + err
        before, after = self.old.snapshot(self.login), self.new.snapshot(self.login)
        assert set(after.folders) == set(before.folders)
        for folder, records in before.folders.items():
            copied = Counter(record.sha256 for record in after.folders[folder])
            twice = [digest for digest, count in copied.items() if count > 1]
            assert not twice, f"{folder}: {len(twice)} message(s) on the new server more than once"
            assert copied == Counter(record.sha256 for record in records), folder
        old_identity, new_identity = identities(self.old, self.login, "INBOX.", "."), \
            identities(self.new, self.login, "", "/")
        assert set(new_identity) == set(old_identity)
        for folder, (uidvalidity, uids) in old_identity.items():
            assert new_identity[folder][0] == uidvalidity, f"{folder}: UIDVALIDITY not kept"
            assert new_identity[folder][1] == uids, f"{folder}: UIDs not kept"


@pytest.fixture
def migration(old_server: testbed.DovecotServer, new_server: testbed.DovecotServer, tmp_path: Path,
              capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Migration:
    return Migration(tmp_path, old_server, new_server, capsys, monkeypatch)


def seed(migration: Migration, inbox: int) -> None:
    """`inbox` messages in INBOX, with gaps in its UIDs, and a second folder."""
    seed_bulk(migration.old, migration.login, "INBOX",
              [make_message(f"{migration.login}-{i}", body=BODY) for i in range(inbox)])
    seed_bulk(migration.old, migration.login, "Archive/2020",
              [make_message(f"{migration.login}-a{i}") for i in range(5)])
    with migration.old.imap(migration.login) as client:
        client.select_folder("INBOX")
        uids = client.search("ALL")
        client.delete_messages([uids[1], uids[7]])
        client.expunge()


def copied_so_far(migration: Migration) -> int:
    try:
        return message_count(migration.new, migration.login)
    except imaplib.IMAP4.error:  # the new account is not there for Dovecot yet
        return 0


def test_serve_killed_mid_copy_keeps_identity_and_copies_nothing_twice_after_a_restart(migration: Migration) -> None:
    seed(migration, 600)

    def mid_copy() -> None:
        # dsync commits every 100 messages: the first commit means it is fetching through the slow link. The
        # state is checked after the kill: a CLI call per poll here could outlast the copy on a busy machine.
        wait_for(lambda: copied_so_far(migration) > 0, "the first messages on the new server")
        copied_at_kill.append(message_count(migration.new, migration.login))

    copied_at_kill: list[int] = []

    migration.crash_and_restart(mid_copy, "copying", bytes_per_second=250_000)  # a 12 s copy to land in
    assert 0 < copied_at_kill[0] < 600, copied_at_kill
    migration.assert_equal_without_duplicates_and_identity_held()
    assert migration.events().count("MigrationStarted") >= 2, "the copy was resumed after the restart"


def test_serve_killed_mid_switch_keeps_identity_and_copies_nothing_twice_after_a_restart(migration: Migration) -> None:
    seed(migration, 400)

    def mid_switch() -> None:
        wait_for(lambda: migration.state() == "copying", "the copy to start")
        time.sleep(1.5)
        # Mail reaching the old server after the first pass listed INBOX: the final delta's, which takes seconds.
        seed_bulk(migration.old, migration.login, "INBOX",
                  [make_message(f"{migration.login}-late-{i}", body=BODY) for i in range(300)])
        wait_for(lambda: migration.state() == "switching", "the switch", 120)

    migration.crash_and_restart(mid_switch, "switching")
    migration.assert_equal_without_duplicates_and_identity_held()
    assert migration.events().count("SwitchStarted") == 2, "the restarted serve claimed the switch again"
