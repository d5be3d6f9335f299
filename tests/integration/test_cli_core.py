"""The CLI's core commands, and every kind of bad input: one line, non-zero exit, nothing half-written."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mailmigrator.ops.cli import main
from mailmigrator.ops.config import load_config
from mailmigrator.ops.composition import open_store
from sample_history import record_sample_accounts


def config_file(tmp_path: Path, body: str = "") -> Path:
    path = tmp_path / "mm.toml"
    path.write_text(
        '[store]\nurl = "sqlite:events.sqlite"\nlock_timeout = 1\n'
        '[migration]\nlog_file = "migration.log"\nprimary_domain = "example.com"\n' + body
    )
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "absent"


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    return lines[0]


def test_start_stop_status_log_and_replay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(config_file(tmp_path))
    code, out, err = run_cli(capsys, "--config", cfg, "status")
    assert code == 0 and "run: stopped" in out and "no events recorded yet" in err
    assert not (tmp_path / "events.sqlite").exists(), "a read command creates no store"

    assert run_cli(capsys, "--config", cfg, "start")[:2] == (0, "migration started\n")
    assert run_cli(capsys, "--config", cfg, "start")[:2] == (0, "migration was already started\n")
    code, out, _ = run_cli(capsys, "--config", cfg, "status", "--json")
    assert code == 0 and set(json.loads(out)) == {"run", "accounts", "progress", "nodes"}
    assert json.loads(out)["accounts"] == [] and json.loads(out)["progress"]["accounts_total"] == 0
    assert json.loads(out)["run"]["state"] == "started"

    wired = open_store(load_config(Path(cfg)), create=False)
    assert wired is not None
    wired.app.record_login("kim@example.com", "imap", "127.0.0.2", "127.0.0.1")
    wired.app.record_password_verified("kim@example.com", "imap-login")
    wired.close()

    code, out, _ = run_cli(capsys, "--config", cfg, "status", "--json", "--state", "verified")
    accounts = json.loads(out)["accounts"]
    assert [(a["login"], a["state"], a["locked"]) for a in accounts] == [("kim@example.com", "verified", True)]
    assert {"messages", "bytes", "folders", "error"} <= set(accounts[0])

    code, out, _ = run_cli(capsys, "--config", cfg, "show", "KIM")
    assert code == 0 and "kim@example.com" in out and "verified" in out

    code, out, _ = run_cli(capsys, "--config", cfg, "history", "kim", "--json")
    names = [row["event"] for row in json.loads(out)]
    assert names == ["Registered", "LoginSeen", "PasswordVerified"]

    assert run_cli(capsys, "--config", cfg, "stop")[0] == 0
    code, out, _ = run_cli(capsys, "--config", cfg, "log")
    log = out.splitlines()
    assert any("MIGRATION STARTED" in line for line in log)
    assert any("kim@example.com  password verified" in line for line in log)
    assert (tmp_path / "migration.log").read_text().splitlines() == log

    code, out, _ = run_cli(capsys, "--config", cfg, "replay")
    assert code == 0 and out.startswith("replayed 7 events")
    assert (tmp_path / "migration.log").read_text().splitlines() == log


def test_unknown_account(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(config_file(tmp_path))
    run_cli(capsys, "--config", cfg, "start")
    before = digest(tmp_path / "events.sqlite")
    for command in ("show", "history"):
        code, _, err = run_cli(capsys, "--config", cfg, command, "nobody")
        assert code == 1
        assert "nobody@example.com" in one_line(err)
    assert digest(tmp_path / "events.sqlite") == before


def test_illegal_transition_is_refused_with_its_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config_file(tmp_path)
    run_cli(capsys, "--config", str(cfg), "start")
    wired = open_store(load_config(cfg), create=False)
    assert wired is not None
    wired.app.request_finish("test")
    events = wired.app.recorder.max_notification_id()
    wired.close()
    code, _, err = run_cli(capsys, "--config", str(cfg), "start")
    assert code == 1
    assert "Started is not allowed in state 'finishing'" in one_line(err)
    wired = open_store(load_config(cfg), create=False)
    assert wired is not None and wired.app.recorder.max_notification_id() == events
    wired.close()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[source]\nhots = \"x\"\n", "unknown key [source] hots"),
        ("[migration.domains]\n\"not-an-ip\" = \"a.com\"\n", "not an IP address"),
        ("[proxy]\nimap = \"0.0.0.0:143\"\n", "[proxy] imap must be a list"),
        ("[source]\nhost = \"old\"\ntls = \"sometimes\"\n", "[source] tls = 'sometimes' is not one of"),
        ("[target]\nport = \"143\"\n", "[target] port must be a whole number"),
        ("[bogus]\n", "unknown section [bogus]"),
        ("[store\n", "not valid TOML"),
    ],
)
def test_bad_config_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, expected: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[migration]\nlog_file = "m.log"\n' * ("[migration]" not in body and "[store" not in body) + body)
    code, _, err = run_cli(capsys, "--config", str(path), "start")
    assert code == 2
    assert expected in one_line(err)
    assert list(tmp_path.iterdir()) == [path], "nothing was written"


def test_missing_config_file_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "--config", str(tmp_path / "nope.toml"), "status")
    assert code == 2 and "does not exist" in one_line(err)


def test_corrupt_store_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(config_file(tmp_path))
    store = tmp_path / "events.sqlite"
    store.write_bytes(b"this is not a database at all" * 100)
    before = digest(store)
    for command in ("status", "start"):
        code, _, err = run_cli(capsys, "--config", cfg, command)
        assert code == 1
        assert "not an SQLite database" in one_line(err)
    assert digest(store) == before


def test_store_path_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(config_file(tmp_path))
    (tmp_path / "events.sqlite").mkdir()
    code, _, err = run_cli(capsys, "--config", cfg, "start")
    assert code == 1 and "events.sqlite" in one_line(err)


def test_locked_store_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(config_file(tmp_path))
    assert run_cli(capsys, "--config", cfg, "start")[0] == 0
    assert run_cli(capsys, "--config", cfg, "stop")[0] == 0
    store = tmp_path / "events.sqlite"
    holder = sqlite3.connect(store, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        code, _, err = run_cli(capsys, "--config", cfg, "start")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == 1
    assert "locked" in one_line(err)
    code, out, _ = run_cli(capsys, "--config", cfg, "status")
    assert "run: stopped" in out, "the refused start left no trace"


def test_unreachable_postgresql(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pg.toml"
    path.write_text('[store]\nurl = "postgresql://postgres@127.0.0.1:1/mailmigrator"\n')
    code, _, err = run_cli(capsys, "--config", str(path), "status")
    assert code == 1
    assert "cannot reach postgresql database 'mailmigrator' on 127.0.0.1:1" in one_line(err)


def test_bad_store_url_is_a_configuration_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "u.toml"
    path.write_text('[store]\nurl = "mysql://db/x"\n')
    code, _, err = run_cli(capsys, "--config", str(path), "status")
    assert code == 2 and "unknown scheme" in one_line(err)


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice" in one_line(capsys.readouterr().err)


def test_console_script_runs(tmp_path: Path) -> None:
    cfg = config_file(tmp_path)
    script = Path(sys.executable).parent / "mailmigrator"
    result = subprocess.run([str(script), "--config", str(cfg), "status", "--json"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["run"]["state"] == "stopped"


def test_finish_follows_a_finish_another_process_took_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import threading

    cfg = config_file(tmp_path, '[source]\nhost = "127.0.0.1"\n')
    wired = open_store(load_config(cfg), create=True)
    assert wired is not None
    wired.app.start_run("test")
    wired.app.request_finish("console")
    assert wired.app.claim_finish("node-b") is True
    assert wired.app.claim_finish("node-c") is False, "a second claim is refused"
    timer = threading.Timer(2.5, lambda: wired.app.complete_finish(3, 7))
    timer.start()
    try:
        code, out, err = run_cli(capsys, "--config", str(cfg), "finish")
    finally:
        timer.join()
        wired.close()
    assert code == 0
    assert "being done by node-b" in err
    assert "completed by node-b" in out


def test_status_lists_each_account_with_its_folders_messages_node_and_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config_file(tmp_path)
    wired = open_store(load_config(cfg), create=True)
    assert wired is not None
    record_sample_accounts(wired.app, 0, 3)
    wired.app.record_login("zed@example.com", "imap", "127.0.0.2", "127.0.0.1")
    wired.app.record_password_verified("zed@example.com", "imap-login")
    wired.app.record_failed("zed@example.com", "connection reset by the old server", True)
    wired.views.catch_up()
    docs = {doc["login"]: doc for doc in wired.views.accounts()}
    wired.close()

    code, out, _ = run_cli(capsys, "--config", str(cfg), "status")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines() if "@example.com" in line}
    assert set(rows) == set(docs)
    for login, doc in docs.items():
        assert rows[login][1] == doc["state"] and rows[login][3] == str(len(doc["folders"])), rows[login]
        assert rows[login][4] == f"{doc['messages']:,}"
    assert any(doc["folders"] for doc in docs.values())
    assert out.splitlines()[-1].endswith("connection reset by the old server") and "zed@example.com" in out
    code, out, _ = run_cli(capsys, "--config", str(cfg), "status", "--state", "failed")
    assert [line.split()[0] for line in out.splitlines() if "@example.com" in line] == ["zed@example.com"]
