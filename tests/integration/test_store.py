"""The event store on SQLite and PostgreSQL: replay equality, conflicts, upcasting, encryption, exactly-once views."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import RecordConflictError, StoredEvent

from mailmigrator.adapters.store.event_store import create_key_file
from mailmigrator.domain.application import MigrationService
from mailmigrator.domain.logins import account_id
from mailmigrator.domain.model import AccountMigration
from mailmigrator.ops.config import load_config
from sample_history import record_sample_accounts
from mailmigrator.ops.composition import OpenStore, open_store
from mailmigrator.projections.accounts import state_totals
from mailmigrator.projections.viewstore import ViewBatch, ViewStore


def write_config(tmp_path: Path, store_url: str, extra: str = "") -> Path:
    path = tmp_path / "mailmigrator.toml"
    path.write_text(
        f'[store]\nurl = "{store_url}"\n{extra}\n'
        '[migration]\nlog_file = "migration.log"\nprimary_domain = "example.com"\n'
        'migration_account = "migration@example.com"\n'
    )
    return path


def open_wired(tmp_path: Path, store_url: str, extra: str = "") -> OpenStore:
    config = load_config(write_config(tmp_path, store_url, extra))
    wired = open_store(config, create=True)
    assert wired is not None
    return wired


def views_state(wired: OpenStore) -> dict[str, Any]:
    views = wired.views
    return {
        "run": views.run_status(),
        "accounts": views.accounts(),
        "log": views.log_lines(),
        "position": views.store.position(),
    }


def test_replay_rebuilds_exactly_the_live_views(tmp_path: Path, store_url: str) -> None:
    wired = open_wired(tmp_path, store_url)
    app, views = wired.app, wired.views
    app.configure_run({"migration_account": "migration@example.com"})
    app.start_run("test")
    # Live views are built in several increments, interleaved with new events.
    record_sample_accounts(app, 0, 6)
    views.catch_up(batch_size=7)
    record_sample_accounts(app, 6, 8)
    views.catch_up(batch_size=50)
    app.stop_run("test")
    views.catch_up()
    live = views_state(wired)
    log_file = tmp_path / "migration.log"
    live_file = log_file.read_text()

    assert live["run"]["state"] == "stopped"
    assert len(live["accounts"]) == 14
    assert all(a["state"] == "completed" and not a["locked"] for a in live["accounts"])
    assert live["accounts"][0]["messages"] == 5 * 20
    assert live_file.splitlines() == live["log"]
    assert any("migration FAILED: connection reset" in line for line in live["log"])
    assert live["accounts"][0]["alias_conflicts"] == [
        {"address": "ceo@example.com", "reason": "already mapped to chief@example.com"}]
    assert any("alias ceo@example.com NOT applied" in line for line in live["log"])

    replayed = views.replay()
    assert replayed == app.recorder.max_notification_id()
    assert views_state(wired) == live
    assert log_file.read_text() == live_file
    wired.close()


def live_views_with_a_log_file(tmp_path: Path, store_url: str) -> tuple[OpenStore, str]:
    """Sample accounts followed live; returns the store and its log file's text."""
    wired = open_wired(tmp_path, store_url)
    record_sample_accounts(wired.app, 0, 5)
    wired.views.catch_up()
    return wired, (tmp_path / "migration.log").read_text()


def test_replay_writes_the_log_file_from_its_batches_without_reading_the_log_back(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wired, live_file = live_views_with_a_log_file(tmp_path, store_url)
    read_back: list[int] = []
    real_chunks = wired.views.store.log_chunks
    monkeypatch.setattr(wired.views.store, "log_chunks",
                        lambda after, size: (read_back.append(after), real_chunks(after, size))[1])
    wired.views.replay(batch_size=7)
    assert (tmp_path / "migration.log").read_text() == live_file
    # The final check finds nothing left to copy: it starts after the last line the batches wrote.
    assert read_back == [len(live_file.splitlines())]
    wired.close()


def test_a_replay_cut_short_or_overtaken_leaves_the_log_file_exact(tmp_path: Path, store_url: str) -> None:
    wired, live_file = live_views_with_a_log_file(tmp_path, store_url)
    views, log_file = wired.views, tmp_path / "migration.log"
    commit, commits = views.store.commit, 0

    def commit_then_die_at_the_third(batch: ViewBatch) -> None:
        nonlocal commits
        commits += 1
        if commits == 3:
            raise OSError("killed mid-replay")
        commit(batch)

    views.store.commit = commit_then_die_at_the_third  # type: ignore[method-assign]
    with pytest.raises(OSError):
        views.replay(batch_size=7)
    views.store.commit = commit  # type: ignore[method-assign]
    assert 0 < len(log_file.read_text()) < len(live_file)
    views.catch_up()
    assert log_file.read_text() == live_file

    # Another process's catch-up writes the file in the middle of a replay: the replay stops appending.
    other = open_wired(tmp_path, store_url)
    commits = 0

    def commit_while_another_follows(batch: ViewBatch) -> None:
        nonlocal commits
        commit(batch)
        commits += 1
        if commits == 2:
            other.views.sync_log_file()

    views.store.commit = commit_while_another_follows  # type: ignore[method-assign]
    views.replay(batch_size=7)
    assert log_file.read_text() == live_file
    other.close()
    wired.close()


def test_account_view_tracks_lock_and_redirect(tmp_path: Path, store_url: str) -> None:
    wired = open_wired(tmp_path, store_url)
    app, views = wired.app, wired.views
    app.configure_run({"migration_account": "migration@example.com"})
    login = "dave@example.com"
    app.record_login(login, "pop3", "127.0.0.5", "127.0.0.1")
    views.catch_up()
    doc = views.account(login)
    assert doc is not None and doc["state"] == "seen" and not doc["locked"] and doc["redirect"] is None
    app.record_password_verified(login, "pop3-login")
    views.catch_up()
    doc = views.account(login)
    assert doc is not None and doc["locked"] and doc["redirect"] == "migration@example.com"
    app.record_account_created(login, login, [], "passwd-file")
    app.record_failed(login, "new server refused the account", False)
    views.catch_up()
    doc = views.account(login)
    assert doc is not None and doc["state"] == "failed" and doc["locked"]
    assert doc["error"] == "new server refused the account"
    wired.close()


def test_concurrent_writers_conflict_without_forking_history(tmp_path: Path, store_url: str) -> None:
    first = open_wired(tmp_path, store_url)
    second = open_wired(tmp_path, store_url)
    login = "erin@example.com"
    first.app.record_login(login, "imap", "127.0.0.2", "127.0.0.1")
    a = first.app.account(login)
    b = second.app.account(login)
    a.verify_password("imap-login")
    b.reject_password("authentication failed")
    first.app.save(a)
    with pytest.raises(RecordConflictError):
        second.app.save(b)
    history = first.app.history(login)
    assert [e.originator_version for e in history] == [1, 2, 3]
    assert type(history[-1]).__name__ == "PasswordVerified"
    first.close()
    second.close()


def test_parallel_commands_on_one_account_all_land_in_order(tmp_path: Path, store_url: str) -> None:
    apps = [open_wired(tmp_path, store_url) for _ in range(4)]
    login = "frank@example.com"
    apps[0].app.record_login(login, "imap", "127.0.0.2", "127.0.0.1")
    firsts: list[bool] = []

    def log_in(wired: OpenStore) -> None:
        for _ in range(5):
            wired.app.record_login(login, "imap", "127.0.0.3", "127.0.0.1")
        firsts.append(wired.app.record_password_verified(login, "imap-login"))

    threads = [threading.Thread(target=log_in, args=(w,)) for w in apps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    history = apps[0].app.history(login)
    names = [type(e).__name__ for e in history]
    assert names.count("LoginSeen") == 1 + 4 * 5
    assert names.count("PasswordVerified") == 4
    assert firsts.count(True) == 1, "exactly one caller moved the account out of `seen`"
    assert [e.originator_version for e in history] == list(range(1, len(history) + 1))
    for w in apps:
        w.close()


def test_an_old_version_event_still_loads(tmp_path: Path, store_url: str) -> None:
    wired = open_wired(tmp_path, store_url)
    app = wired.app
    login = "gina@example.com"
    app.record_login(login, "imap", "127.0.0.2", "127.0.0.1")
    registered = app.history(login)[0]
    # A LoginSeen as version 1 of the class wrote it: no local_address, no class_version.
    old = StoredEvent(
        originator_id=registered.originator_id,
        originator_version=3,
        topic=f"{AccountMigration.LoginSeen.__module__}:AccountMigration.LoginSeen",
        state=json.dumps(
            {"timestamp": {"_type_": "datetime_iso", "_data_": "2026-01-02T03:04:05+00:00"},
             "protocol": "pop3", "client_address": "127.0.0.7"}
        ).encode(),
    )
    app.recorder.insert_events([old])
    event = app.history(login)[-1]
    assert type(event).__name__ == "LoginSeen"
    assert event.protocol == "pop3" and event.local_address == ""
    assert app.account(login).version == 3
    wired.views.catch_up()
    assert any("POP3 login from 127.0.0.7" in line for line in wired.views.log_lines())
    wired.close()


def test_a_copy_start_from_before_the_engine_choice_loads_as_the_imap_engine(tmp_path: Path, store_url: str) -> None:
    wired = open_wired(tmp_path, store_url)
    app = wired.app
    login = "hugo@example.com"
    app.record_login(login, "imap", "127.0.0.2", "127.0.0.1")
    app.record_password_verified(login, "imap-login")
    app.record_account_created(login, login, [], "passwd-file")
    version = app.account(login).version
    # A MigrationStarted as version 2 of the class wrote it: a node, no engine.
    old = StoredEvent(
        originator_id=account_id(login),
        originator_version=version + 1,
        topic=f"{AccountMigration.MigrationStarted.__module__}:AccountMigration.MigrationStarted",
        state=json.dumps(
            {"timestamp": {"_type_": "datetime_iso", "_data_": "2026-01-02T03:04:05+00:00"},
             "folders": [{"source": "INBOX", "target": "INBOX", "messages": 1, "bytes": 10}],
             "total_messages": 1, "total_bytes": 10, "attempt": 1, "node": "node-a", "class_version": 2}
        ).encode(),
    )
    app.recorder.insert_events([old])
    event = app.history(login)[-1]
    assert type(event).__name__ == "MigrationStarted" and event.engine == "imap"
    assert app.account(login).engine == "imap"
    app.record_migration_started(login, [], 0, 0, node="node-a", engine="dovecot")
    assert app.account(login).engine == "dovecot"
    wired.views.catch_up()
    assert any("imap engine, new UIDs" in line for line in wired.views.log_lines())
    assert any("dovecot engine, identity kept" in line for line in wired.views.log_lines())
    assert wired.views.account(login)["identity"].startswith("identity kept")
    wired.close()


def test_encrypted_store_keeps_payloads_unreadable(tmp_path: Path) -> None:
    key = tmp_path / "store.key"
    create_key_file(key)
    assert key.stat().st_mode & 0o777 == 0o600
    db = tmp_path / "events.sqlite"
    wired = open_wired(tmp_path, f"sqlite:///{db}", f'encryption_key_file = "{key}"')
    wired.app.record_login("secretive.person@example.com", "imap", "127.0.0.2", "127.0.0.1")
    wired.app.record_account_created  # the API exists; payloads below are what matters
    assert wired.app.account("secretive.person@example.com").state == "seen"
    wired.close()
    # The view tables hold logins in clear by design; the events table must not.
    import sqlite3

    with sqlite3.connect(db) as conn:
        states = b"".join(row[0] for row in conn.execute("SELECT state FROM stored_events"))
    assert states and b"secretive.person" not in states and b"127.0.0.2" not in states


def test_a_failed_view_batch_is_rolled_back_and_applied_once_later(tmp_path: Path, store_url: str) -> None:
    wired = open_wired(tmp_path, store_url)
    app, views = wired.app, wired.views
    login = "hank@example.com"
    app.record_login(login, "imap", "127.0.0.2", "127.0.0.1")
    views.catch_up()
    for _ in range(3):
        app.record_login(login, "imap", "127.0.0.2", "127.0.0.1")

    class CrashingViewStore(ViewStore):
        def commit(self, batch: ViewBatch) -> None:
            with self._cursor(commit=True) as c:
                self._set_position(c, "migration_views", batch.start_position, batch.end_position)
                raise OSError("power cut between view rows and commit")

    real = views.store
    views.store = CrashingViewStore(real.datastore, postgres=real.postgres)
    with pytest.raises(OSError):
        views.catch_up()
    views.store = real
    assert views.account(login)["logins"] == 1
    views.catch_up()
    views.catch_up()
    assert views.account(login)["logins"] == 4
    wired.close()


def test_two_followers_racing_apply_each_event_once(tmp_path: Path, store_url: str) -> None:
    writer = open_wired(tmp_path, store_url)
    followers = [open_wired(tmp_path, store_url) for _ in range(3)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def follow(w: OpenStore) -> None:
        try:
            while not stop.is_set():
                w.views.catch_up(batch_size=5)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=follow, args=(w,)) for w in followers]
    for t in threads:
        t.start()
    login = "ivy@example.com"
    for _ in range(60):
        writer.app.record_login(login, "imap", "127.0.0.2", "127.0.0.1")
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    writer.views.catch_up()
    assert writer.views.account(login)["logins"] == 60
    assert writer.views.state_totals() == state_totals(writer.views.accounts())
    assert len([l for l in writer.views.log_lines() if "IMAP login" in l]) == 60
    assert (tmp_path / "migration.log").read_text().count("IMAP login") == 60
    for w in [writer, *followers]:
        w.close()


def test_ids_are_uuid5_of_the_login() -> None:
    app = MigrationService()
    app.record_login("jo@example.com", "imap", "127.0.0.2", "127.0.0.1")
    assert app.account("jo@example.com").id == account_id("jo@example.com")


def sample_store(tmp_path: Path, store_url: str, accounts: int) -> OpenStore:
    """A store holding the sample accounts' histories and one account only seen logging in."""
    wired = open_wired(tmp_path, store_url)
    record_sample_accounts(wired.app, 0, accounts)
    wired.app.record_login("late_1@example.com", "imap", "127.0.0.9", "127.0.0.1")
    return wired


def test_totals_by_state_follow_every_batch_and_are_counted_again_for_a_table_without_them(
        tmp_path: Path, store_url: str) -> None:
    wired = sample_store(tmp_path, store_url, 8)
    views = wired.views
    store, commit = views.store, views.store.commit
    states_seen = set()

    def commit_and_compare(batch: ViewBatch) -> None:
        commit(batch)
        docs = store.accounts()
        states_seen.add(tuple(sorted({doc["state"] for doc in docs})))
        assert store.state_totals() == state_totals(docs)

    store.commit = commit_and_compare  # type: ignore[method-assign]
    views.catch_up(batch_size=3)
    # Accounts moved between states, and a state was left empty, on the way.
    assert len(states_seen) > 3
    expected = views.state_totals()
    assert {t["state"] for t in expected} == {doc["state"] for doc in views.accounts()}
    with store._cursor(commit=True) as c:
        c.execute(store.sql("DELETE FROM {p}mm_totals"))
    wired.close()
    reopened = open_wired(tmp_path, store_url)
    assert reopened.views.state_totals() == expected
    reopened.close()


def test_account_pages_counts_and_totals_come_from_sql_and_match_the_documents(
        tmp_path: Path, store_url: str) -> None:
    wired = sample_store(tmp_path, store_url, 12)
    views = wired.views
    views.catch_up()
    docs = views.accounts()
    logins = [doc["login"] for doc in docs]

    assert views.account_count() == len(docs)
    page = views.account_rows(offset=3, limit=4)
    assert [row["login"] for row in page] == logins[3:7]
    assert [row["folders"] for row in page] == [len(doc["folders"]) for doc in docs[3:7]]
    assert views.account_rows(offset=len(docs), limit=4) == []
    assert views.account_count(search="user1") == sum("user1" in login for login in logins) > 1
    assert [r["login"] for r in views.account_rows(search="user1", limit=2)] == [
        login for login in logins if "user1" in login][:2]
    # LIKE wildcards in a search are literal characters.
    assert views.account_count(search="_") == sum("_" in login for login in logins)
    assert views.account_count(search="%") == 0
    assert views.account_count(state="completed") == sum(doc["state"] == "completed" for doc in docs)
    assert views.account_count(state="failed") == 0
    assert [r["login"] for r in views.account_rows(state="seen")] == ["late_1@example.com"]
    assert views.state_totals() == state_totals(docs)
    wired.close()


def test_status_summaries_are_the_documents_with_folders_counted_and_the_redirect_of_locked_users(
        tmp_path: Path, store_url: str) -> None:
    wired = open_wired(tmp_path, store_url)
    app, views = wired.app, wired.views
    app.configure_run({"migration_account": "notice@example.com"})
    record_sample_accounts(app, 0, 6)
    app.record_login("locked_1@example.com", "imap", "127.0.0.9", "127.0.0.1")
    app.record_password_verified("locked_1@example.com", "imap-login")
    views.catch_up()
    docs = views.accounts()
    summaries = [json.loads(line) for line in views.account_summaries()]

    assert summaries == [{**doc, "folders": len(doc["folders"])} for doc in docs]
    assert any(doc["folders"] for doc in docs)
    assert [s["redirect"] for s in summaries if s["locked"]] == ["notice@example.com"]
    assert all(s["redirect"] is None for s in summaries if not s["locked"])
    assert [json.loads(line)["login"] for line in views.account_summaries("verified")] == ["locked_1@example.com"]
    wired.close()
