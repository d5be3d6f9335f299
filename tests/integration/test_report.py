"""`verify --all` and `report` against the real Dovecot pair: a result recorded per account, a damaged
mailbox found, and one report row per roster account with the values the run recorded."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from copy_testbed import run_cli
import testbed
from mailmigrator.ops.composition import open_store, open_vault
from mailmigrator.ops.config import load_config
from test_operator_flow import account, config_file, events

pytestmark = pytest.mark.dovecot


def migrated_run(old: testbed.DovecotServer, new: testbed.DovecotServer, tmp_path: Path,
                 capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str], str]:
    """Three accounts moved with `migrate --bulk`; a roster of the first two and one never seen."""
    config = config_file(tmp_path, old, new)
    users = [account(old, messages=n) for n in (4, 3, 2)]
    bulk = tmp_path / "users.txt"
    bulk.write_text("".join(f"{login}:{password}\n" for login, password in users))
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "migrate", "--bulk", str(bulk))
    assert code == 0, out + err
    never = f"never-{users[0][0]}"
    wired = open_store(load_config(config), create=False)
    assert wired is not None
    wired.app.record_expected([users[0][0], users[1][0], never], "roster.txt")
    wired.close()
    return config, [login for login, _ in users], never


def test_verify_all_records_each_account_and_finds_a_damaged_mailbox(
    old_server: testbed.DovecotServer, new_server: testbed.DovecotServer, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, (good, damaged, extra), never = migrated_run(old_server, new_server, tmp_path, capsys, monkeypatch)
    with new_server.imap(damaged) as client:
        client.select_folder("INBOX")
        client.delete_messages(client.search()[:1])
        client.expunge()

    # Without an admin login the vault's password is what logs in; one account has lost it.
    wired = open_store(load_config(config), create=False)
    assert wired is not None
    vault = open_vault(load_config(config), wired.app)
    assert vault is not None and vault.destroy(extra)
    wired.close()

    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "verify", "--all")
    assert code == 1, out + err
    assert f"{damaged}: 2 difference(s)" in out and good not in out
    assert f"{extra}: not verifiable: no [source] admin login and no stored password" in out
    assert "1 equal, 1 differ, 1 not verifiable" in out
    assert "accounts 3/3: 1 equal, 1 differ, 1 not verifiable" in err  # the progress line's last state
    compared = {login: [e["data"] for e in events(capsys, monkeypatch, config, login)
                        if e["event"] == "MailboxesCompared"] for login in (good, damaged, extra)}
    assert [c["equal"] for c in compared[good]] == [True] and compared[extra] == []
    assert [(c["equal"], c["differences"]) for c in compared[damaged]] == [(False, 2)]
    assert compared[damaged][0]["examples"] == ['folder "INBOX": 3 messages on the old server, 2 on the new',
                                                compared[damaged][0]["examples"][1]]
    assert "missing on the new server" in compared[damaged][0]["examples"][1]

    # A re-run compares only what has no comparison yet, and still fails on the difference recorded.
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "verify", "--all")
    assert code == 1 and f"{damaged}: differed when last compared" in out, out + err
    assert "0 equal, 0 differ, 1 not verifiable, 2 already compared" in out
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "verify", "--all", "--again")
    assert code == 1 and "1 equal, 1 differ, 1 not verifiable, 0 already" in out, out + err

    for argv in (["verify"], ["verify", good, "--all"]):
        code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), *argv)
        assert code == 2 and err.count("\n") == 1 and "LOGIN or --all" in err

    # The report: one row per roster account, the one never seen included.
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "report")
    assert code == 0, err
    rows = {row["login"]: row for row in csv.DictReader(io.StringIO(out))}
    assert set(rows) == {good, damaged, never}
    assert (rows[good]["state"], rows[good]["old_messages"], rows[good]["new_messages"]) == ("completed", "4", "4")
    assert (rows[damaged]["old_messages"], rows[damaged]["new_messages"]) == ("3", "3")
    assert (rows[good]["verify_equal"], rows[damaged]["verify_equal"]) == ("True", "False")
    assert rows[never]["state"] == "expected" and rows[never]["new_messages"] == "0"
    assert rows[never]["verify_equal"] == "" and rows[never]["completed_at"] == ""
    for field in ("completed_at", "verify_at", "duration_seconds", "folders", "old_bytes", "new_bytes"):
        assert rows[good][field], field

    out_file = tmp_path / "report.json"
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "report", "--out", str(out_file))
    assert code == 0 and out == "", err
    accounts = {a["login"]: a for a in json.loads(out_file.read_text())["accounts"]}
    assert set(accounts) == {good, damaged, never}
    assert accounts[damaged]["verify_differences"] == 2 and accounts[damaged]["verify_equal"] is False
    assert accounts[good]["old_bytes"] == accounts[good]["new_bytes"] > 0
    assert accounts[never]["first_login_at"] is None and accounts[good]["completed_at"] < accounts[good]["verify_at"]
    assert list(tmp_path.glob(".report.json.*")) == []  # no temp file left beside it
