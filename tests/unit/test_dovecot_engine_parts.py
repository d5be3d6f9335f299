"""The Dovecot engine's parts that touch no server: the engine choice, the imapc settings, doveadm's failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailmigrator.adapters.dovecot.copier import late_uids
from mailmigrator.adapters.dovecot.doveadm import ImapcLogin, dsync_command, failure_line, remove_abandoned_configs
from mailmigrator.adapters.mail.comparison import compare_identity
from mailmigrator.adapters.mail.connection import LoginPlan, ServerAddress
from mailmigrator.adapters.mail.message_source import FolderListing, SourceMessage
from mailmigrator.domain.credentials import Credentials
from mailmigrator.ops.config import ConfigError, load_config
from mailmigrator.ops.preflight import copy_engine_choice

SECRET = "s3cret pass"


def config(tmp_path: Path, target: str, source: str = "") -> Path:
    path = tmp_path / "mailmigrator.toml"
    path.write_text(f'[source]\nhost = "old.example.com"\n{source}\n[target]\nport = 143\n{target}\n')
    return path


def choice(tmp_path: Path, target: str, source: str = "") -> str:
    loaded = load_config(config(tmp_path, target, source))
    assert loaded.target is not None
    return copy_engine_choice(loaded.target, loaded.source)


@pytest.fixture
def doveadm_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    doveadm = bin_dir / "doveadm"
    doveadm.write_text("#!/bin/sh\nexit 0\n")
    doveadm.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    conf = tmp_path / "dovecot.conf"
    conf.write_text("")
    return conf


def test_auto_is_imap_without_doveadm_config_and_dovecot_with_it(tmp_path: Path, doveadm_on_path: Path) -> None:
    assert choice(tmp_path, "") == "imap"
    assert choice(tmp_path, f'doveadm_config = "{doveadm_on_path}"') == "dovecot"
    assert choice(tmp_path, f'doveadm_config = "{doveadm_on_path}"', 'protocol = "pop3"') == "imap"
    assert choice(tmp_path, f'engine = "imap"\ndoveadm_config = "{doveadm_on_path}"') == "imap"


def test_auto_is_imap_without_doveadm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert choice(tmp_path, f'doveadm_config = "{tmp_path}/dovecot.conf"') == "imap"


@pytest.mark.parametrize(("target", "source", "expected"), [
    ('engine = "dovecot"\ndoveadm_config = "missing.conf"', "", "[target] doveadm_config"),
    ('engine = "dovecot"\ndoveadm_config = "dovecot.conf"', 'protocol = "pop3"', 'protocol = "pop3" needs'),
])
def test_engine_dovecot_that_cannot_run_is_one_line(tmp_path: Path, doveadm_on_path: Path, target: str,
                                                    source: str, expected: str) -> None:
    with pytest.raises(ConfigError, match="^.*$") as error:
        choice(tmp_path, target, source)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_engine_dovecot_without_doveadm_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(ConfigError, match='engine = "dovecot" needs doveadm on PATH'):
        choice(tmp_path, 'engine = "dovecot"')


def test_an_unknown_engine_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[target\] engine = 'fast' is not one of: auto, imap, dovecot"):
        load_config(config(tmp_path, 'engine = "fast"'))


@pytest.mark.parametrize(("admin_login", "expected"), [
    ("sasl", ['imapc_user = "u@example.com"', 'imapc_master_user = "admin"']),
    ("dovecot-master", ['imapc_user = "u@example.com*admin"']),
    ("", ['imapc_user = "u@example.com"']),
])
def test_imapc_settings_name_the_login_and_read_the_password_from_a_file(
        tmp_path: Path, admin_login: str, expected: list[str]) -> None:
    login = "admin" if admin_login else "u@example.com"
    plan = LoginPlan("u@example.com", Credentials(login, SECRET), admin_login)
    lines = ImapcLogin(ServerAddress("old", 993, "direct", Path("/ca.pem")), plan, "INBOX").settings(tmp_path / "pw")
    assert all(line in lines for line in expected)
    assert f"imapc_password = <{tmp_path / 'pw'}" in lines
    assert {"imapc_ssl = imaps", 'imapc_list_prefix = "INBOX"', "ssl_client_ca_file = /ca.pem"} <= set(lines)
    assert not any(SECRET in line for line in lines)


def test_dsync_is_one_way_and_names_excluded_folders(tmp_path: Path) -> None:
    command = dsync_command("/usr/bin/doveadm", tmp_path / "dsync.conf", "u@example.com", ["Spam", "Trash/Old"])
    assert command == ["/usr/bin/doveadm", "-c", str(tmp_path / "dsync.conf"), "sync", "-1", "-R", "-l", "600",
                       "-x", "Spam", "-x", "Trash/Old", "-u", "u@example.com", "imapc:"]


def test_failure_line_is_the_last_error_without_the_secret() -> None:
    stderr = (f"dsync(u): Info: connected\ndsync(u): Error: imapc: login failed for {SECRET}\n"
              "dsync(u): Info: done\n")
    assert failure_line(stderr, SECRET) == "dsync(u): Error: imapc: login failed for ***"


def test_late_uids_leave_out_new_side_mail_renumbered_by_a_uid_conflict() -> None:
    # old 1..4, 2 expunged, 5 late; the new side's own message had UID 5 and moved to 6, the late one got 7.
    assert late_uids({1, 2, 3, 4, 5}, {1, 3, 4, 6, 7}, {1, 3, 4, 5}) == [7]
    assert late_uids({1, 2, 3, 4}, {1, 3, 4, 5}, {1, 3, 4, 5}) == [5]


def test_identity_differences_name_uidvalidity_and_uids() -> None:
    old = FolderListing(7, [SourceMessage(1, 10), SourceMessage(3, 10)])
    new = FolderListing(8, [SourceMessage(1, 10), SourceMessage(2, 10)])
    assert compare_identity('folder "INBOX"', old, new) == [
        'folder "INBOX": UIDVALIDITY 7 on the old server, 8 on the new',
        'folder "INBOX": UID 3 only on the old server (1)',
        'folder "INBOX": UID 2 only on the new (1)',
    ]
    assert compare_identity("x", old, old) == []


def test_a_killed_processs_private_config_is_removed_a_live_ones_kept(tmp_path: Path) -> None:
    import os

    dead_pid = 4_194_305  # above the largest pid_max Linux allows: no such process
    dead = tmp_path / f"mailmigrator-dsync-{dead_pid}-abc"
    live = tmp_path / f"mailmigrator-dsync-{os.getpid()}-def"
    other = tmp_path / "mailmigrator-dsync-notapid-ghi"
    for directory in (dead, live, other):
        directory.mkdir()
        (directory / "imapc.password").write_text("secret")
    assert remove_abandoned_configs(tmp_path) == [dead]
    assert not dead.exists() and live.exists() and other.exists()


def test_two_runs_on_one_user_wait_for_each_other(tmp_path: Path) -> None:
    command = dsync_command("doveadm", tmp_path / "dsync.conf", "u@example.com")
    assert command[command.index("-l") + 1] == "600"
