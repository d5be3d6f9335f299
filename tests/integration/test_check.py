"""`mailmigrator check` against the real Dovecot pair: exit 0 on a good config, 1 naming each problem, nothing written."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

import testbed
from copy_testbed import new_user, run_cli, started, write_config
from mailmigrator.adapters.store.key_files import write_key_file
from mailmigrator.ops.composition import open_store, open_vault
from mailmigrator.ops.config import load_config
from multinode import free_port

pytestmark = pytest.mark.dovecot

Pair = tuple[testbed.DovecotServer, testbed.DovecotServer]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    ca = trustme.CA()
    base = tmp_path_factory.mktemp("check-pair")
    with started(testbed.make_old_server(base / "old", ca)) as old, started(testbed.make_new_server(base / "new", ca)) as new:
        yield old, new


def good_config(tmp: Path, pair: Pair) -> Path:
    old, new = pair
    path = write_config(tmp, old, new)
    path.write_text(path.read_text().replace("[migration]\n", f'passwd_file = "{tmp / "users"}"\n'
                                             f'transport_map = "{tmp / "transport"}"\nold_smtp = "[old.example.com]:25"\n'
                                             "[migration]\n", 1))
    wired = open_store(load_config(path), create=True)  # a store whose vault is sealed with credentials.key
    assert wired is not None
    open_vault(load_config(path), wired.app)
    wired.close()
    return path


def listing(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_good_config_passes_and_check_writes_nothing(pair: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    config = good_config(tmp_path, pair)
    before = listing(tmp_path)
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "check")
    assert code == 0, out + err
    assert "[source] IMAP" in out and "UIDPLUS" in out and "[store] credential_key_file" in out
    assert listing(tmp_path) == before


def wrong_port(tmp: Path, text: str, pair: Pair) -> str:
    return text.replace(f'host = "127.0.0.1:{pair[0].imap_port}"', f'host = "127.0.0.1:{free_port("127.0.0.1")}"')


def bad_certificate(tmp: Path, text: str, pair: Pair) -> str:
    other = tmp / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    return text.replace(f'ca_file = "{pair[0].ca_pem}"', f'ca_file = "{other}"', 1)


def wrong_master_password(tmp: Path, text: str, pair: Pair) -> str:
    (tmp / "master.secret").write_text("not-the-master-password\n")
    return text


def passwd_file_in_a_missing_directory(tmp: Path, text: str, pair: Pair) -> str:
    return text.replace(f'passwd_file = "{tmp / "users"}"', f'passwd_file = "{tmp / "gone" / "users"}"')


def wrong_vault_key(tmp: Path, text: str, pair: Pair) -> str:
    (tmp / "credentials.key").unlink()
    write_key_file(tmp / "credentials.key")
    return text


@pytest.mark.parametrize(("spoil", "named"), [
    (wrong_port, "[source] IMAP"),
    (bad_certificate, "[source] IMAP"),
    (wrong_master_password, "[target] master_user"),
    (passwd_file_in_a_missing_directory, "[target] passwd_file"),
    (wrong_vault_key, "[store] credential_key_file"),
])
def test_each_problem_exits_1_with_the_line_naming_it(spoil: Callable[[Path, str, Pair], str], named: str, pair: Pair,
                                                      tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    config = good_config(tmp_path, pair)
    login, password = new_user(*pair)
    config.write_text(spoil(tmp_path, config.read_text(), pair))
    with_login = [login, "--password-stdin"] if named == "[target] master_user" else []
    code, out, err = run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "check", "--json",
                             *with_login)
    assert code == 1, out + err
    rows = json.loads(out)["rows"]
    bad = [row for row in rows if not row["ok"]]
    assert [row["item"] for row in bad] == [named], bad
    if spoil is bad_certificate:
        assert "certificate" in bad[0]["detail"]


def test_check_login_shows_the_folder_plan_the_copy_then_records(pair: Pair, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = pair
    login, password = new_user(old, new)
    testbed.seed_standard_mailbox(old, login)
    config = write_config(tmp_path, old, new, migration='exclude_folders = ["Junk"]')
    code, out, err = run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "check", login,
                             "--password-stdin", "--json")
    assert code == 0, out + err
    rows = json.loads(out)["rows"]
    shown = {row["item"].removeprefix("folder "): row["detail"].split(";")[0].removeprefix("-> ")
             for row in rows if row["item"].startswith("folder ") and row["detail"].startswith("->")}
    assert any(row["detail"].startswith("excluded") for row in rows)

    code, _, err = run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "migrate", "--user", login,
                           "--password-stdin")
    assert code == 0, err
    wired = open_store(load_config(config), create=False)
    assert wired is not None
    started_event = next(e for e in wired.app.history(login) if type(e).__name__ == "MigrationStarted")
    wired.close()
    assert shown == {f["source"]: f["target"] for f in started_event.folders}
    assert any(source != target for source, target in shown.items())


def test_a_passwd_file_on_a_read_only_mount_is_named(pair: Pair, tmp_path: Path) -> None:
    """Really unwritable (root ignores file modes): the passwd-file's directory bind-mounted read-only."""
    import os
    import shutil
    import subprocess
    import sys

    config = good_config(tmp_path, pair)
    users = tmp_path / "accounts"
    users.mkdir()
    (users / "users").write_text("")
    config.write_text(config.read_text().replace(f'passwd_file = "{tmp_path / "users"}"',
                                                 f'passwd_file = "{users / "users"}"'))
    check = [sys.executable, "-c", "import sys; from mailmigrator.ops.cli import main; sys.exit(main())",
             "--config", str(config), "check"]
    if os.geteuid() != 0:
        users.chmod(0o555)
        (users / "users").chmod(0o444)
        command = check
    elif shutil.which("unshare"):
        command = ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(users), *check]
    else:
        pytest.skip("root without unshare: no way to make a file unwritable")
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if "mount" in done.stderr and done.returncode not in (0, 1):
        pytest.skip(f"cannot mount read-only here: {done.stderr.strip()[:200]}")
    assert done.returncode == 1, done.stdout + done.stderr
    bad = [line for line in done.stdout.splitlines() if line.startswith("BAD")]
    assert len(bad) == 1 and "[target] passwd_file" in bad[0] and "cannot be written" in bad[0], done.stdout
