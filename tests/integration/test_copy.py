"""The copy engine against a real Dovecot pair: fidelity, TLS, logins, POP3, limits, refusals."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import trustme

import testbed
from copy_testbed import FaultyRelay, new_user, run_cli, started, write_config

pytestmark = pytest.mark.dovecot


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[tuple[testbed.DovecotServer, testbed.DovecotServer]]:
    """An old server ("." separator, "INBOX." prefix, admin master user) and a new one ("/", no prefix)."""
    base = tmp_path_factory.mktemp("copy-pair")
    with started(testbed.make_old_server(base / "old", ca)) as old, started(testbed.make_new_server(base / "new", ca)) as new:
        yield old, new


def _extras(old: testbed.DovecotServer, login: str) -> dict[str, list[testbed.MessageRecord]]:
    """A \\Deleted (not expunged) message, and a folder whose parent was never created (\\Noselect)."""
    when = datetime(2022, 5, 6, 7, 8, 9, tzinfo=timezone(timedelta(hours=3)))
    deleted = testbed.SeedMessage(testbed.make_message("deleted-not-expunged", date=when), when, ("\\Deleted", "\\Seen"))
    orphan = testbed.SeedMessage(testbed.make_message("orphan", date=when), when, ("$Forwarded",))
    with old.imap(login) as client:
        inbox = testbed.append_messages(client, "INBOX", [deleted])
        client.create_folder("INBOX.Eltern.Kind")  # maildir++: "Eltern" exists only as \Noselect
        client.subscribe_folder("INBOX.Eltern.Kind")
        client.append("INBOX.Eltern.Kind", orphan.raw, flags=orphan.flags, msg_time=orphan.internaldate)
    return {"INBOX": inbox, "Eltern/Kind": [orphan.record()]}


def logins_of(server: testbed.DovecotServer, login: str) -> int:
    """How many IMAP logins of `login` the server's log shows."""
    return server.log_path.read_text(errors="replace").count(f"imap-login: Info: Login: user=<{login}>")


def test_a_small_account_is_copied_over_one_connection_on_each_server_per_pass(
    pair: tuple[testbed.DovecotServer, testbed.DovecotServer], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = pair
    login, password = new_user(old, new)
    for folder in ("INBOX", "INBOX.Work", "INBOX.Lists", "INBOX.Travel"):
        testbed.seed_bulk(old, login, folder, [testbed.make_message(f"{login}-{folder}-{i}") for i in range(5)])
    config = write_config(tmp_path, old, new)
    old_before, new_before = logins_of(old, login), logins_of(new, login)
    code, out, err = run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "migrate",
                             "--user", login, "--password-stdin")
    assert code == 0, err
    # The old server: the password check, then one connection that plans and copies all ten folders.
    assert logins_of(old, login) - old_before == 2
    assert logins_of(new, login) - new_before <= 2
    code, out, err = run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "verify", login,
                             "--password-stdin")
    assert code == 0, out + err


def test_copy_keeps_every_folder_message_flag_date_and_subscription(
    pair: tuple[testbed.DovecotServer, testbed.DovecotServer], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = pair
    login, password = new_user(old, new)
    expected = testbed.seed_standard_mailbox(old, login)
    extras = _extras(old, login)
    before = old.snapshot(login)
    config = write_config(tmp_path, old, new)

    code, out, err = run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "migrate",
                             "--user", login, "--password-stdin")
    assert code == 0, err
    assert "migrated" in out

    after = new.snapshot(login)
    assert set(after.folders) == set(before.folders)  # nested, empty, non-ASCII, INBOX.x -> x
    for folder, records in before.folders.items():
        assert sorted(after.folders[folder]) == sorted(records), folder  # sha256, flags, INTERNALDATE
    assert after.folders["Entwürfe/Ärger"] == expected.folders["Entwürfe/Ärger"]
    assert extras["INBOX"][0] in after.folders["INBOX"]  # \Deleted copied with the flag
    assert any("$Forwarded" in r.flags for r in after.folders["INBOX"])
    assert after.subscribed == before.subscribed
    assert "Leer" not in after.subscribed and "Leer" in after.folders
    assert after.special_use == {"\\Sent": "Sent", "\\Drafts": "Drafts", "\\Trash": "Trash",
                                 "\\Junk": "Junk", "\\Archive": "Archive"}
    with new.imap(login) as client:
        attributes = {name: flags for flags, _, name in client.list_folders()}
    assert b"\\Noselect" in attributes["Eltern"] or b"\\NonExistent" in attributes["Eltern"]
    assert after.folders["Eltern/Kind"] == extras["Eltern/Kind"]

    code, out, err = run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "verify", login,
                             "--password-stdin")
    assert code == 0, out + err

    # A second run copies nothing more.
    code, out, _ = run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "migrate",
                           "--user", login, "--password-stdin")
    assert code == 0 and "already migrated" in out
    assert sum(len(v) for v in new.snapshot(login).folders.values()) == sum(len(v) for v in before.folders.values())


def test_verify_names_each_difference(
    pair: tuple[testbed.DovecotServer, testbed.DovecotServer], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = pair
    login, password = new_user(old, new)
    testbed.seed_standard_mailbox(old, login)
    config = write_config(tmp_path, old, new)
    assert run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "migrate", "--user", login,
                   "--password-stdin")[0] == 0
    with new.imap(login) as client:
        client.select_folder("Sent")
        uid = client.search("ALL")[0]
        client.add_flags([uid], ["\\Flagged"])
        client.append("Projekte", testbed.make_message("stray"))
    code, out, _ = run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "verify", login,
                           "--password-stdin")
    assert code == 1
    lines = out.strip().splitlines()
    assert any("Sent" in line and "flags differ" in line for line in lines)
    assert any("Projekte" in line and "not on the old server" in line for line in lines)


@pytest.mark.parametrize("tls", ["detect", "direct", "disable"])
def test_each_tls_mode_copies(
    pair: tuple[testbed.DovecotServer, testbed.DovecotServer], tmp_path: Path, tls: str,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = pair
    login, password = new_user(old, new)
    testbed.append_messages(old.imap(login), "INBOX", [
        testbed.SeedMessage(testbed.make_message(f"tls-{tls}"), datetime(2020, 1, 2, tzinfo=timezone.utc), ("\\Seen",))])
    config = write_config(tmp_path, old, new, tls=tls)
    code, _, err = run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "migrate", "--user", login,
                           "--password-stdin")
    assert code == 0, err
    assert new.snapshot(login).folders["INBOX"] == old.snapshot(login).folders["INBOX"]


def test_untrusted_certificate_is_rejected(
    pair: tuple[testbed.DovecotServer, testbed.DovecotServer], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = pair
    login, password = new_user(old, new)
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    config = write_config(tmp_path, old, new, tls="direct")
    text = config.read_text().replace(f'ca_file = "{old.ca_pem}"', f'ca_file = "{other_ca}"', 1)
    config.write_text(text)
    code, out, err = run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "migrate", "--user", login,
                             "--password-stdin")
    assert code == 1
    assert "certificate" in err.lower()
    assert password not in out + err


@pytest.mark.parametrize("style", ["sasl", "dovecot-master"])
def test_admin_login_copies_and_verifies_without_the_users_password(
    pair: tuple[testbed.DovecotServer, testbed.DovecotServer], tmp_path: Path, style: str,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = pair
    login, password = new_user(old, new)
    testbed.seed_standard_mailbox(old, login)
    admin_secret = tmp_path / "admin.secret"
    admin_secret.write_text(old.master_password or "")
    admin_secret.chmod(0o600)
    config = write_config(tmp_path, old, new, source=(
        f'admin_user = "{old.master_user}"\nadmin_password_file = "{admin_secret}"\nadmin_login = "{style}"'))
    code, _, err = run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "migrate", "--user", login,
                           "--password-stdin")
    assert code == 0, err
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "verify", login)
    assert code == 0, out + err
    # A wrong admin password fails: the admin login really is what copies.
    admin_secret.write_text("wrong")
    code, _, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "verify", login)
    assert code == 1 and "refused" in err


def test_wrong_password_is_refused_and_recorded(
    pair: tuple[testbed.DovecotServer, testbed.DovecotServer], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = pair
    login, _ = new_user(old, new)
    config = write_config(tmp_path, old, new)
    code, out, err = run_cli(capsys, monkeypatch, "not-the-password\n", "--config", str(config), "migrate",
                             "--user", login, "--password-stdin")
    assert code == 1 and "refused the password" in err
    assert "not-the-password" not in out + err
    code, out, _ = run_cli(capsys, monkeypatch, "", "--config", str(config), "history", login, "--json")
    assert [e["event"] for e in json.loads(out)][-1] == "PasswordRejected"


def test_account_missing_on_target_is_refused(
    pair: tuple[testbed.DovecotServer, testbed.DovecotServer], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = pair
    login, password = new_user(old, new, on_target=False)
    config = write_config(tmp_path, old, new)
    code, _, err = run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "migrate", "--user", login,
                           "--password-stdin")
    assert code == 1 and "does not exist on the new server" in err


def test_pop3_source_copies_inbox_with_received_dates_and_no_flags(
    pair: tuple[testbed.DovecotServer, testbed.DovecotServer], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = pair
    login, password = new_user(old, new)
    received = datetime(2019, 7, 8, 9, 10, 11, tzinfo=timezone(timedelta(hours=2)))
    dated = datetime(2018, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    with_received = testbed.make_message("pop-received", date=dated, headers={}).replace(
        b"From:", b"Received: from relay by mx; Mon, 08 Jul 2019 09:10:11 +0200\r\n"
                  b"Received: from origin by relay; Sun, 07 Jul 2019 01:00:00 +0000\r\nFrom:", 1)
    only_date = testbed.make_message("pop-date", date=dated)
    with old.imap(login) as client:
        for raw in (with_received, only_date):
            client.append("INBOX", raw, flags=("\\Seen",), msg_time=datetime(2024, 1, 1, tzinfo=timezone.utc))
        client.create_folder("INBOX.NotOverPop")
        client.append("INBOX.NotOverPop", testbed.make_message("not-pop"))
    config = write_config(tmp_path, old, new, protocol="pop3", tls="detect")
    code, _, err = run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "migrate", "--user", login,
                           "--password-stdin")
    assert code == 0, err
    after = new.snapshot(login)
    inbox = {r.sha256: r for r in after.folders["INBOX"]}
    import hashlib
    assert set(inbox) == {hashlib.sha256(with_received).hexdigest(), hashlib.sha256(only_date).hexdigest()}
    assert inbox[hashlib.sha256(with_received).hexdigest()].internaldate == received
    assert inbox[hashlib.sha256(only_date).hexdigest()].internaldate == dated
    assert all(not r.flags for r in inbox.values())
    assert "NotOverPop" not in after.folders
    # A rerun copies nothing twice (UIDL checkpoint).
    code, out, _ = run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "migrate", "--user", login,
                           "--password-stdin")
    assert code == 0 and len(new.snapshot(login).folders["INBOX"]) == 2


def test_excluded_folders_and_oversized_messages_are_skipped_and_recorded(
    pair: tuple[testbed.DovecotServer, testbed.DovecotServer], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = pair
    login, password = new_user(old, new)
    expected = testbed.seed_standard_mailbox(old, login)
    config = write_config(tmp_path, old, new,
                          migration='exclude_folders = ["Projekte/*", "Leer"]\nmax_message_size = 50000')
    code, out, err = run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "migrate", "--user", login,
                             "--password-stdin")
    assert code == 0, err
    assert "1 skipped" in out
    after = new.snapshot(login)
    assert "Leer" not in after.folders and "Projekte/Alpha" not in after.folders
    assert after.folders["Projekte"] == expected.folders["Projekte"]  # only children were excluded
    large = [r for r in expected.folders["INBOX"] if r not in after.folders["INBOX"]]
    assert len(large) == 1 and len(after.folders["INBOX"]) == len(expected.folders["INBOX"]) - 1
    code, out, _ = run_cli(capsys, monkeypatch, "", "--config", str(config), "history", login, "--json")
    skipped = [s for e in json.loads(out) if e["event"] == "FolderCopied" for s in e["data"]["skipped"]]
    assert len(skipped) == 1 and "max_message_size" in skipped[0]["reason"]


class QuotaServer(testbed.DovecotServer):
    """A new server whose quota plugin refuses any message over 40 kB (a real APPEND refusal)."""

    def _render_config(self) -> str:
        return super()._render_config() + (
            "mail_plugins = $mail_plugins quota\n"
            "plugin {\n  quota = maildir:User quota\n  quota_rule = *:storage=1G\n"
            "  quota_max_mail_size = 40k\n}\n"
        )


def test_message_the_target_refuses_is_recorded_with_the_servers_reason(
    pair: tuple[testbed.DovecotServer, testbed.DovecotServer], tmp_path: Path, ca: trustme.CA,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, _ = pair
    quota = QuotaServer(tmp_path / "quota", name="new", ca=ca, master_user="master")
    with started(quota):
        login, password = new_user(old, quota)
        expected = testbed.seed_standard_mailbox(old, login)
        config = write_config(tmp_path, old, quota)
        code, out, err = run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "migrate",
                                 "--user", login, "--password-stdin")
        assert code == 0, err
        assert "1 skipped" in out
        after = quota.snapshot(login)
        assert len(after.folders["INBOX"]) == len(expected.folders["INBOX"]) - 1
        code, out, _ = run_cli(capsys, monkeypatch, "", "--config", str(config), "history", login, "--json")
        skipped = [s for e in json.loads(out) if e["event"] == "FolderCopied" for s in e["data"]["skipped"]]
        assert len(skipped) == 1
        assert skipped[0]["reason"].startswith("refused by the new server") and "LIMIT" in skipped[0]["reason"]
        code, out, _ = run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "verify", login,
                               "--password-stdin")
        assert code == 1 and "missing on the new server" in out


def test_connection_dropped_mid_folder_is_retried_without_duplicates(
    pair: tuple[testbed.DovecotServer, testbed.DovecotServer], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = pair
    login, password = new_user(old, new)
    bodies = [testbed.make_message(f"drop-{i}-{secrets.token_hex(2)}", size=20_000) for i in range(120)]
    testbed.seed_bulk(old, login, "INBOX", bodies)
    # Cut the first two connections that carry more than 600 kB from the old server (mid-FETCH of INBOX).
    with FaultyRelay(("127.0.0.1", old.imap_port or 0), cut_after=600_000, cuts=2) as relay:
        config = write_config(tmp_path, old, new, source_port=relay.port, tls="disable")
        code, out, err = run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "migrate",
                                 "--user", login, "--password-stdin")
        assert relay.cuts_done >= 1
    assert code == 0, out + err
    after = new.snapshot(login).folders["INBOX"]
    assert len(after) == 120 and len({r.sha256 for r in after}) == 120
    config = write_config(tmp_path, old, new)
    code, out, err = run_cli(capsys, monkeypatch, password + "\n", "--config", str(config), "verify", login,
                             "--password-stdin")
    assert code == 0, out + err


def test_message_larger_than_the_fetch_window_copies_intact(
    pair: tuple[testbed.DovecotServer, testbed.DovecotServer], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mailmigrator.adapters.mail.copier import CopySettings

    old, new = pair
    login, password = new_user(old, new)
    window = CopySettings.batch_bytes
    head = testbed.make_message("bigger-than-the-window", subject="big")
    big = head + b"x" * 76 + b"\r\n" + (b"y" * 76 + b"\r\n") * (3 * window // 78)
    assert len(big) > 3 * window
    when = datetime(2023, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    small = [testbed.SeedMessage(testbed.make_message(f"around-{i}", date=when), when, ("\\Seen",)) for i in range(3)]
    testbed.seed_bulk(old, login, "INBOX", [small[0], testbed.SeedMessage(big, when, ("\\Flagged",)), *small[1:]])
    before = old.snapshot(login)

    code, _, err = run_cli(capsys, monkeypatch, password + "\n", "--config", str(write_config(tmp_path, old, new)),
                           "migrate", "--user", login, "--password-stdin")
    assert code == 0, err
    after = new.snapshot(login)
    assert sorted(after.folders["INBOX"]) == sorted(before.folders["INBOX"])  # sha256, flags, INTERNALDATE
    assert len(after.folders["INBOX"]) == 4
