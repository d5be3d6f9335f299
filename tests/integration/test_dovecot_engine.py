"""The Dovecot engine (doveadm dsync over imapc) against the real Dovecot pair: identity, later passes, secrets."""

from __future__ import annotations

import json
import poplib
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

import testbed
from copy_testbed import new_user, run_cli, started, write_config
from mailmigrator.adapters.dovecot.copier import DsyncCopier
from mailmigrator.adapters.dovecot.doveadm import ImapcLogin, dsync_command, private_config
from mailmigrator.adapters.mail.connection import LoginPlan, ServerAddress
from mailmigrator.adapters.mail.sweep import SweepRecorder
from mailmigrator.domain.application import MigrationService
from mailmigrator.domain.credentials import Credentials
from mailmigrator.ops.composition import build_migration, open_store
from mailmigrator.ops.config import load_config

pytestmark = pytest.mark.dovecot


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[testbed.DovecotServer, testbed.DovecotServer]]:
    """An old server ("." separator, "INBOX." prefix) and a new one ("/", no prefix) with POP3 on both."""
    base = tmp_path_factory.mktemp("dsync-pair")
    ca = trustme.CA()
    with started(testbed.make_old_server(base / "old", ca)) as old, \
            started(testbed.make_new_server(base / "new", ca, pop3=True)) as new:
        yield old, new


def dovecot_config(directory: Path, old: testbed.DovecotServer, new: testbed.DovecotServer, engine: str = "dovecot",
                   doveadm_config: Path | None = None) -> Path:
    # The test bed's Dovecot chroots its mail processes, where the TLS module cannot be loaded: imapc speaks plain.
    path = write_config(directory, old, new, tls="disable")
    keys = f'engine = "{engine}"\n' + (f'doveadm_config = "{doveadm_config}"\n' if doveadm_config else "")
    path.write_text(path.read_text().replace("[target]\n", "[target]\n" + keys, 1))
    return path


def identities(server: testbed.DovecotServer, login: str, prefix: str,
               separator: str) -> dict[str, tuple[int, list[int]]]:
    """Every selectable folder by its path below the prefix ("/"-joined): its UIDVALIDITY and UID list."""
    out = {}
    with server.imap(login) as client:
        for flags, _, name in client.list_folders():
            if b"\\Noselect" in flags or b"\\NonExistent" in flags:
                continue
            path = name if name == "INBOX" else name.removeprefix(prefix).replace(separator, "/")
            uidvalidity = client.folder_status(name, [b"UIDVALIDITY"])[b"UIDVALIDITY"]
            client.select_folder(name, readonly=True)
            out[path] = (int(uidvalidity), sorted(client.search("ALL")))
    return out


def uidls(server: testbed.DovecotServer, port: int | None, user: str, password: str) -> list[bytes]:
    assert port is not None
    pop = poplib.POP3("127.0.0.1", port, timeout=10)
    try:
        pop.user(user)
        pop.pass_(password)
        return [line.split()[1] for line in pop.uidl()[1]]
    finally:
        pop.quit()


def migrate(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, config: Path, login: str,
            password: str) -> tuple[int, str, str]:
    return run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "migrate", "--user", login,
                   "--password-stdin")


def test_every_folder_keeps_its_uidvalidity_and_uids_and_pop3_uidls_stay(
    pair: tuple[testbed.DovecotServer, testbed.DovecotServer], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = pair
    login, password = new_user(old, new)
    testbed.seed_standard_mailbox(old, login)
    testbed.seed_bulk(old, login, "INBOX", [testbed.make_message(f"{login}-{i}") for i in range(6)])
    with old.imap(login) as client:  # gaps in the UIDs
        client.select_folder("INBOX")
        uids = client.search("ALL")
        client.delete_messages([uids[1], uids[3]])
        client.expunge()
    config = dovecot_config(tmp_path, old, new, doveadm_config=new.config_path)
    commands: list[list[str]] = []
    run_process = trio.run_process

    async def recording(command: list[str], **options: Any) -> Any:
        commands.append(list(command))
        return await run_process(command, **options)

    monkeypatch.setattr(trio, "run_process", recording)

    code, out, err = migrate(capsys, monkeypatch, config, login, password)
    assert code == 0, out + err
    assert commands and all(password not in " ".join(c) for c in commands)
    assert all(c[3:6] == ["sync", "-1", "-R"] and not Path(c[2]).exists() for c in commands)  # private config gone

    before, after = identities(old, login, "INBOX.", "."), identities(new, login, "", "/")
    assert set(after) == set(before)
    for folder, identity in before.items():
        assert after[folder] == identity, folder
    master = f"{login}{testbed.MASTER_SEPARATOR}"
    assert uidls(new, new.pop3_port, master + (new.master_user or ""), new.master_password or "") == \
        uidls(old, old.pop3_port, login, password)

    code, out, err = run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "verify", login,
                             "--password-stdin")
    assert code == 0, out + err
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "show", login, "--json")
    assert json.loads(out)["engine"] == "dovecot"
    assert "identity kept" in json.loads(out)["identity"]
    shown = out
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "replay")
    assert code == 0, err
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "show", login, "--json")
    assert json.loads(out) == json.loads(shown)  # the history replays to the same view


def test_later_passes_keep_new_side_mail_and_carry_flags_and_expunges(
    pair: tuple[testbed.DovecotServer, testbed.DovecotServer], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = pair
    login, password = new_user(old, new)
    testbed.seed_bulk(old, login, "INBOX", [testbed.make_message(f"{login}-{i}") for i in range(4)])
    config = dovecot_config(tmp_path, old, new, doveadm_config=new.config_path)
    code, out, err = migrate(capsys, monkeypatch, config, login, password)
    assert code == 0, out + err

    testbed.seed_bulk(new, login, "INBOX", [testbed.make_message(f"{login}-delivered-to-new")])
    testbed.seed_bulk(old, login, "INBOX", [testbed.make_message(f"{login}-late")])
    with old.imap(login) as client:
        client.select_folder("INBOX")
        uids = client.search("ALL")
        client.add_flags([uids[0]], [b"\\Flagged"])
        client.delete_messages([uids[1]])
        client.expunge()
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "finish")
    assert code == 0, out + err
    assert "1 late message(s) copied" in out, out
    assert '"flags corrected"' in err  # dsync's one-way sync left the new flag out; the delta set it

    with new.imap(login) as client:
        client.select_folder("INBOX", readonly=True)
        fetched = client.fetch(client.search("ALL"), ["FLAGS", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
    subjects = [bytes(items[b"BODY[HEADER.FIELDS (SUBJECT)]"]) for items in fetched.values()]
    assert sum(b"delivered-to-new" in s for s in subjects) == 1
    assert sum(b"-late" in s for s in subjects) == 1
    assert uids[1] not in fetched
    assert b"\\Flagged" in fetched[uids[0]][b"FLAGS"]
    names = [e["event"] for e in json.loads(run_cli(capsys, monkeypatch, "", "--config", str(config),
                                                    "history", login, "--json")[1])]
    assert "FinishSwept" in names


def test_the_password_is_in_no_process_argument_and_the_private_config_is_gone(tmp_path: Path) -> None:
    secret = "pa ss\"w%rd$"
    login = ImapcLogin(ServerAddress("127.0.0.1", 143, "disable"),
                       LoginPlan("u@example.com", Credentials("u@example.com", secret)))
    base = tmp_path / "dovecot.conf"
    base.write_text("")
    with private_config(base, login) as config:
        command = dsync_command("doveadm", config, "u@example.com")
        assert not any(secret in arg for arg in command)
        assert (config.stat().st_mode & 0o777) == 0o600
        assert (config.parent.stat().st_mode & 0o777) == 0o700
        text = config.read_text()
        assert secret not in text and f"!include {base}" in text
        password_file = next(p for p in config.parent.iterdir() if p != config)
        assert password_file.read_text() == secret and (password_file.stat().st_mode & 0o777) == 0o600
    assert not config.parent.exists()


def test_engine_dovecot_without_doveadm_is_a_one_line_error_and_auto_without_config_is_imap(
    pair: tuple[testbed.DovecotServer, testbed.DovecotServer], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = pair
    login, password = new_user(old, new)
    testbed.seed_bulk(old, login, "INBOX", [testbed.make_message(f"{login}-1")])
    config = dovecot_config(tmp_path, old, new, engine="auto")
    code, out, err = migrate(capsys, monkeypatch, config, login, password)
    assert code == 0, out + err
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "show", login, "--json")
    assert json.loads(out)["engine"] == "imap"

    config = dovecot_config(tmp_path, old, new, engine="dovecot", doveadm_config=new.config_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code, out, err = migrate(capsys, monkeypatch, config, login, password)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "needs doveadm on PATH" in err


@contextmanager
def created_account(tmp_path: Path, old: testbed.DovecotServer, new: testbed.DovecotServer,
                    login: str) -> Iterator[tuple[MigrationService, DsyncCopier]]:
    """The store and the configured Dovecot engine, with `login` recorded as created on the new server."""
    testbed.seed_bulk(old, login, "INBOX", [testbed.make_message(f"{login}-{i}") for i in range(3)])
    config = load_config(dovecot_config(tmp_path, old, new, doveadm_config=new.config_path))
    wired = open_store(config, create=True)
    assert wired is not None
    try:
        copier = build_migration(config, wired.app).migrate.copier
        assert isinstance(copier, DsyncCopier)
        wired.app.record_login(login, "imap", "127.0.0.2", "127.0.0.1")
        wired.app.record_password_verified(login, "imap-login")
        wired.app.record_account_created(login, login, [], "passwd-file")
        yield wired.app, copier
    finally:
        wired.close()


async def test_a_long_dsync_run_renews_the_lease_and_ends_with_every_folder_done(
    pair: tuple[testbed.DovecotServer, testbed.DovecotServer], tmp_path: Path,
) -> None:
    old, new = pair
    login, password = await trio.to_thread.run_sync(new_user, old, new)
    slow = tmp_path / "slow-doveadm"
    slow.write_text(f"#!/bin/sh\nsleep 1\nexec {shutil.which('doveadm')} \"$@\"\n")
    slow.chmod(0o755)
    with created_account(tmp_path, old, new, login) as (app, copier):
        copier.settings = replace(copier.settings, doveadm=str(slow), lease_seconds=0.9)
        result = await copier.copy(login, login, password, login)
        assert result.ok, result.error
        copied = [e for e in app.history(login) if type(e).__name__ == "FolderCopied" and e.source_folder == "INBOX"]
        assert [e.done for e in copied][0] is False and copied[-1].done  # renewed while running, then done
        assert all(f.done for f in app.account(login).folders.values())
        assert app.account(login).folders["INBOX"].messages == 3


async def test_a_later_pass_carries_only_flags_changed_on_the_old_side_since_the_last_where_it_has_condstore(
    pair: tuple[testbed.DovecotServer, testbed.DovecotServer], tmp_path: Path,
) -> None:
    old, new = pair
    login, password = await trio.to_thread.run_sync(new_user, old, new)
    with created_account(tmp_path, old, new, login) as (app, copier):
        assert (await copier.copy(login, login, password, login)).ok
        assert app.account(login).folders["INBOX"].highest_modseq > 0
        with old.imap(login) as client:
            client.select_folder("INBOX")
            first = client.search("ALL")[0]
            client.add_flags([first], [b"$Important", b"\\Answered"])
            second = client.search("ALL")[1]
        with new.imap(login) as client:  # the user's own change on the new side, after the first pass
            client.select_folder("INBOX")
            client.add_flags([second], [b"\\Seen"])
        recorder = SweepRecorder(app)
        sweep = DsyncCopier(recorder, copier.servers, copier.source_limit, copier.settings)
        assert (await sweep.copy(login, login, password, login)).ok
        with new.imap(login) as client:
            client.select_folder("INBOX", readonly=True)
            flags = client.get_flags([first, second])
        assert b"$Important" in flags[first] and b"\\Answered" in flags[first]
        assert b"\\Seen" in flags[second]  # not changed on the old side since: left as the user set it


@pytest.mark.parametrize(("exit_status", "retryable"), [(75, True), (67, False)])
async def test_a_failed_dsync_is_recorded_with_doveadm_s_reason_and_whether_to_retry(
    pair: tuple[testbed.DovecotServer, testbed.DovecotServer], tmp_path: Path, exit_status: int, retryable: bool,
) -> None:
    old, new = pair
    login, password = await trio.to_thread.run_sync(new_user, old, new)
    failing = tmp_path / "failing-doveadm"
    failing.write_text(f"#!/bin/sh\necho 'dsync(u): Info: connecting' >&2\n"
                       f"echo 'dsync(u): Error: imapc: it went wrong' >&2\nexit {exit_status}\n")
    failing.chmod(0o755)
    with created_account(tmp_path, old, new, login) as (app, copier):
        copier.settings = replace(copier.settings, doveadm=str(failing))
        result = await copier.copy(login, login, password, login)
        assert not result.ok and not result.busy
        assert result.error == f"doveadm sync (exit {exit_status}): dsync(u): Error: imapc: it went wrong"
        failed = app.history(login)[-1]
        assert type(failed).__name__ == "MigrationFailed" and failed.retryable is retryable
