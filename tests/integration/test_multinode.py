"""Several `serve` nodes on one PostgreSQL store against the real Dovecot pair."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from copy_testbed import FaultyRelay, message_count
from multinode import ServeNode, cli, fleet, wait_for
from proxy_fixtures import OLD_PASSWORD, Pair, ensure_notice_account, pair, seed_user, write_config  # noqa: F401

from mailmigrator.adapters.store.vault import CredentialVault
from mailmigrator.domain.application import MigrationService
from testbed import make_message, seed_bulk
from mailmigrator.adapters.store.event_store import parse_store_url, store_environment

pytestmark = pytest.mark.dovecot

def status_json(config: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from mailmigrator.ops.cli import main; sys.exit(main())",
         "--config", str(config), "status", "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def pg_url(database: str) -> str:
    return f"postgresql://postgres@127.0.0.1:5432/{database}"


def service(url: str, tmp_path: Path) -> MigrationService:
    return MigrationService(env=store_environment(parse_store_url(url, tmp_path)))


def test_stop_on_one_node_stops_every_node(pair: Pair, tmp_path: Path, pg_database: str) -> None:
    ensure_notice_account(pair)
    base = write_config(tmp_path, pair, tls=False)
    url = pg_url(pg_database)
    with fleet(base, url, tmp_path, count=3) as nodes:
        assert cli(nodes[0].config, "start") == 0
        for node in nodes:
            wait_for(lambda: node.run_state() == "started", f"{node.name} to obey start", timeout=10)
        assert cli(nodes[1].config, "stop") == 0
        took = [wait_for(lambda: node.run_state() == "stopped", f"{node.name} to obey stop", timeout=10)
                for node in nodes]
        assert max(took) < 5, f"stop reached the nodes after {took} s"
        # Each node reports its live figures, the adaptive old-server limit among them, for `status`.
        wait_for(lambda: len(status_json(nodes[0].config)["nodes"]) == 3, "every node to report", timeout=15)
        reports = {n["node"]: n for n in status_json(nodes[0].config)["nodes"]}
        assert set(reports) == {node.name for node in nodes}
        assert all(r["source_limit"]["ceiling"] == 8 and 1 <= r["source_limit"]["limit"] <= 8 for r in reports.values())
        # Stopped: a login on another node passes through to the old server and migrates nothing.
        login = "multinode-stopped@example.com"
        seed_user(pair, login, messages=3)
        client = nodes[2].imap_login(login, OLD_PASSWORD)
        status, data = client.select("INBOX", readonly=True)
        client.logout()
        assert status == "OK" and int(data[0]) == 3
        app = service(url, tmp_path)
        try:
            account = app.account(login)
            assert account.state == "seen" and account.node == ""
        finally:
            app.close()


def test_accounts_logging_in_across_nodes_are_migrated_once_each_by_a_named_node(
    pair: Pair, tmp_path: Path, pg_database: str
) -> None:
    ensure_notice_account(pair)
    base = write_config(tmp_path, pair, tls=False)
    url = pg_url(pg_database)
    logins = [f"spread{n}@example.com" for n in range(100)]
    pair.old.add_users({login: OLD_PASSWORD for login in logins})
    for login in logins:
        seed_bulk(pair.old, login, "INBOX", [make_message(f"{login}-{i}") for i in range(2)])
    with fleet(base, url, tmp_path, count=3) as nodes:
        assert cli(nodes[0].config, "start") == 0
        for node in nodes:
            wait_for(lambda: node.run_state() == "started", f"{node.name} to obey start", timeout=10)

        def log_in(n: int) -> None:
            # Every user logs in on two nodes at once: only one may migrate it.
            for node in (nodes[n % 3], nodes[(n + 1) % 3]):
                try:
                    node.imap_login(logins[n], OLD_PASSWORD).logout()
                except Exception:  # noqa: BLE001 - locked users may be refused; the store is what counts
                    pass

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(log_in, range(len(logins))))
        app = service(url, tmp_path)
        try:
            wait_for(lambda: all(app.account(login).state == "completed" for login in logins),
                     "every account to complete", timeout=180)
            names = {node.name for node in nodes}
            for login in logins:
                account = app.account(login)
                history = [type(e).__name__ for e in app.history(login)]
                assert history.count("MigrationCompleted") == 1
                assert account.node in names, f"{login} was migrated by {account.node!r}, not a named node"
        finally:
            app.close()


@contextlib.contextmanager
def started_behind_a_slow_link(pair: Pair, tmp_path: Path, url: str) -> Iterator[list[ServeNode]]:
    """Two started nodes (5 s leases) whose old server sits behind a slow link, so that a kill lands inside a copy."""
    ensure_notice_account(pair)
    base = write_config(tmp_path, pair, tls=False)
    slow = FaultyRelay(("127.0.0.1", pair.old.imap_port), bytes_per_second=50_000)
    base.write_text(base.read_text().replace(f"imap_port = {pair.old.imap_port}\n", f"imap_port = {slow.port}\n", 1))
    with slow, fleet(base, url, tmp_path, count=2, lease_seconds=5) as nodes:
        assert cli(nodes[0].config, "start") == 0
        for node in nodes:
            wait_for(lambda: node.run_state() == "started", f"{node.name} to obey start", timeout=10)
        yield nodes


def log_in_to_migrate(node: ServeNode, login: str) -> None:
    """A user's login that starts (or resumes) the migration; the proxy may refuse it while the account is locked."""
    try:
        node.imap_login(login, OLD_PASSWORD).logout()
    except Exception:  # noqa: BLE001 - a locked account's login may be refused; the store is what counts
        pass


def checkpointed(app: MigrationService, login: str) -> bool:
    return app.has_account(login) and app.account(login).state == "copying" and bool(app.account(login).folders)


def test_a_killed_node_has_its_account_taken_over_after_the_lease(
    pair: Pair, tmp_path: Path, pg_database: str
) -> None:
    url = pg_url(pg_database)
    login = "takeover@example.com"
    seed_user(pair, login, messages=400)
    with started_behind_a_slow_link(pair, tmp_path, url) as nodes:
        log_in_to_migrate(nodes[0], login)
        app = service(url, tmp_path)
        try:
            wait_for(lambda: checkpointed(app, login), "the copy to checkpoint", timeout=30)
            nodes[0].kill()
            assert app.account(login).state == "copying", "node-1 finished before it was killed"
            wait_for(lambda: app.account(login).state == "completed", "node-2 to take over and finish", timeout=30)
            account = app.account(login)
            assert account.node == "node-2"
            assert message_count(pair.new, login) == 402  # 400 in INBOX + 2 in Archive/2020, no duplicates
            verified = subprocess.run(
                [sys.executable, "-c", "import sys; from mailmigrator.ops.cli import main; sys.exit(main())",
                 "--config", str(nodes[1].config), "verify", login, "--password-stdin"],
                input=OLD_PASSWORD + "\n", capture_output=True, text=True, timeout=120)
            assert verified.returncode == 0, verified.stdout + verified.stderr
        finally:
            app.close()


def test_a_node_with_another_vault_key_refuses_to_start_with_one_line(
    pair: Pair, tmp_path: Path, pg_database: str
) -> None:
    ensure_notice_account(pair)
    base = write_config(tmp_path, pair, tls=False)
    with fleet(base, pg_url(pg_database), tmp_path, count=1) as nodes:
        # The first node sealed the vault's key check; a node with a key file of its own must not join.
        stranger = nodes[0].config.with_name("stranger.toml")
        stranger.write_text(nodes[0].config.read_text().replace(
            f'credential_key_file = "{tmp_path / "credentials.key"}"',
            f'credential_key_file = "{tmp_path / "stranger.key"}"').replace(f'["{nodes[0].host}:', '["127.0.0.9:'))
        for command in (["serve"], ["migrate", "--user", "x@example.com", "--password-stdin"], ["finish"]):
            run = subprocess.run(
                [sys.executable, "-c", "import sys; from mailmigrator.ops.cli import main; sys.exit(main())",
                 "--config", str(stranger), *command], input="x\n", capture_output=True, text=True, timeout=60)
            assert run.returncode == 2, (command, run.stdout, run.stderr)
            assert len(run.stderr.splitlines()) == 1, (command, run.stderr)
            assert "[store] credential_key_file" in run.stderr and "stranger.key" in run.stderr
        assert nodes[0].answers()


def test_an_undecryptable_credential_is_reported_and_the_other_account_taken_over(
    pair: Pair, tmp_path: Path, pg_database: str
) -> None:
    url = pg_url(pg_database)
    good, bad = "takeover-good@example.com", "takeover-bad@example.com"
    # Copies of 250 messages a batch through the slow link: each account is mid-copy, checkpointed, for seconds.
    for login in (good, bad):
        seed_user(pair, login, messages=800)
    with started_behind_a_slow_link(pair, tmp_path, url) as nodes:
        for login in (good, bad):
            log_in_to_migrate(nodes[0], login)
        app = service(url, tmp_path)
        try:
            wait_for(lambda: checkpointed(app, good) and checkpointed(app, bad), "both copies to checkpoint", timeout=30)
            nodes[0].kill()
            # The bad account's vault row is damaged (as if sealed with another key).
            vault = CredentialVault.on(app.factory)
            with vault.datastore.transaction(commit=True) as c:
                c.execute(vault.sql("UPDATE {p}mm_vault SET sealed = %s WHERE login = %s"), (b"\0" * 48, bad))
            wait_for(lambda: app.account(good).state == "completed", "node-2 to take the good account over",
                     timeout=40)
            assert app.account(good).node == "node-2"
            assert message_count(pair.new, good) == 802
            wait_for(lambda: app.account(bad).state == "failed", "the bad account to be reported", timeout=20)
            assert "credential_key_file" in (app.account(bad).last_error or "")
            assert any(r.get("login") == bad for r in nodes[1].log_events("stored credential does not decrypt"))
            assert OLD_PASSWORD not in nodes[1].log_text()
            # Reported once, though every lease scan meets it again.
            failures = lambda: [type(e).__name__ for e in app.history(bad)].count("MigrationFailed")  # noqa: E731
            assert failures() == 1 and len(nodes[1].log_events("stored credential does not decrypt")) == 1
            # The user's next login verifies the password again and the account finishes.
            log_in_to_migrate(nodes[1], bad)
            wait_for(lambda: app.account(bad).state == "completed", "the bad account to resume on login", timeout=40)
        finally:
            app.close()
