"""The roster against the real Dovecot pair: imported, counted by status, idempotent, replaced, refused whole."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from copy_testbed import run_cli
from test_operator_flow import account, config_file
import testbed

pytestmark = pytest.mark.dovecot


def event_count(config: Path) -> int:
    with sqlite3.connect(config.parent / "events.sqlite") as db:
        return int(db.execute("SELECT COUNT(*) FROM stored_events").fetchone()[0])


def roster_of_30(old: testbed.DovecotServer, new: testbed.DovecotServer, tmp_path: Path,
                 capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                 ) -> tuple[Path, list[tuple[str, str]], list[str]]:
    """A roster of 30 imported, of which the 10 that exist on the old server are migrated by `migrate --bulk`."""
    config = config_file(tmp_path, old, new)
    users = [account(old, messages=1) for _ in range(10)]
    missing = [f"absent{n}-{tmp_path.name[-6:]}@example.com".lower() for n in range(20)]
    roster = tmp_path / "roster.txt"
    # The migrated users given in the bulk format, with passwords that must not be kept.
    roster.write_text("# the run\n" + "".join(f"{login}:{pw}\n" for login, pw in users)
                      + "\n".join(m.upper() for m in missing) + "\n")
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "roster", "import", str(roster))
    assert code == 0, err
    assert "30 added, 0 already on the roster, 0 removed" in out
    with sqlite3.connect(tmp_path / "events.sqlite") as db:
        stored = b"".join(bytes(row[0]) for row in db.execute("SELECT state FROM stored_events"))
    assert not any(pw.encode() in stored for _, pw in users)
    bulk = tmp_path / "bulk.txt"
    bulk.write_text("".join(f"{login}:{pw}\n" for login, pw in users))
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "migrate", "--bulk", str(bulk))
    assert code == 0, err
    return config, users, missing


def store_only_config(tmp_path: Path) -> Path:
    """A config with an SQLite store and no mail server: the roster needs none."""
    config = tmp_path / "mm.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "events.sqlite"}"\n'
                      '[migration]\nprimary_domain = "example.com"\n')
    return config


def test_roster_of_30_with_10_migrated_counts_10_done_and_20_not_seen(
    old_server: testbed.DovecotServer, new_server: testbed.DovecotServer, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, users, missing = roster_of_30(old_server, new_server, tmp_path, capsys, monkeypatch)
    roster = tmp_path / "roster.txt"

    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "status", "--json")
    assert code == 0, err
    status = json.loads(out)
    assert status["roster"] == {"accounts": 30, "done": 10, "in_progress": 0, "failed": 0, "not_seen": 20}
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "status")
    assert "roster: 10/30 accounts done, 0 in progress, 0 failed, 20 not seen yet" in out
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "status", "--state", "expected",
                             "--json")
    assert sorted(a["login"] for a in json.loads(out)["accounts"]) == sorted(missing)

    # Re-import: nothing new recorded.
    after_migrate = event_count(config)
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "roster", "import", str(roster))
    assert code == 0, err
    assert "0 added, 30 already on the roster, 0 removed" in out
    assert event_count(config) == after_migrate

    # --replace with 5 of the never-seen dropped: those are withdrawn and no longer counted.
    kept = tmp_path / "kept.txt"
    kept.write_text("".join(f"{login}\n" for login, _ in users) + "".join(f"{m}\n" for m in missing[5:]))
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "roster", "import", str(kept),
                             "--replace")
    assert code == 0, err
    assert "0 added, 25 already on the roster, 5 removed" in out
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "status", "--json")
    status = json.loads(out)
    assert status["roster"] == {"accounts": 25, "done": 10, "in_progress": 0, "failed": 0, "not_seen": 15}
    assert status["progress"]["accounts_total"] == 25
    withdrawn = {a["login"]: a["state"] for a in status["accounts"] if a["login"] in missing[:5]}
    assert set(withdrawn.values()) == {"withdrawn"}
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "log")
    assert f"{missing[0]}  added to the roster (roster import roster.txt)" in out
    assert f"{missing[0]}  taken off the roster (roster import kept.txt); never seen, no longer counted" in out

    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "finish")
    assert code == 0, err
    assert "15 roster account(s) never migrated" in out
    listed = out.split("never migrated (the user never logged in): ", 1)[1].split("\n", 1)[0]
    assert listed.split(", ") == sorted(missing[5:])
    assert "migrate --bulk FILE" in out and "status --state expected" in out


def test_a_bad_line_refuses_the_whole_file_and_records_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = store_only_config(tmp_path)
    good = tmp_path / "good.txt"
    good.write_text("alice\nbob@example.com\n")
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "roster", "import", str(good))
    assert code == 0, err
    before = event_count(config)
    bad = tmp_path / "bad.txt"
    bad.write_text("carol\n:secret-pw\nda ve@example.com:pw2\n")
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "roster", "import", str(bad),
                             "--replace")
    assert code == 2
    assert f"{bad}: line 2: empty user name" in err
    assert f"{bad}: line 3: a login has no spaces" in err
    assert "secret-pw" not in err and "pw2" not in err
    assert "Traceback" not in err
    assert event_count(config) == before
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "status", "--json")
    assert json.loads(out)["roster"]["accounts"] == 2


def test_a_view_table_made_before_the_roster_gets_its_column_filled_from_the_documents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = store_only_config(tmp_path)
    roster = tmp_path / "roster.txt"
    roster.write_text("alice\nbob\ncarol\n")
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "roster", "import", str(roster))
    assert code == 0, err
    with sqlite3.connect(tmp_path / "events.sqlite") as db:
        db.execute("ALTER TABLE mm_accounts DROP COLUMN on_roster")
    code, out, err = run_cli(capsys, monkeypatch, "", "--config", str(config), "status", "--json")
    assert code == 0, err
    assert json.loads(out)["roster"] == {"accounts": 3, "done": 0, "in_progress": 0, "failed": 0, "not_seen": 3}
