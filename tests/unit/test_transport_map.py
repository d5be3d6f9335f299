"""The transport map follows the account projection: exactly the accounts whose mail the old server still takes."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailmigrator.adapters.accounts.transport_map import TransportMap
from mailmigrator.domain.application import MigrationService
from mailmigrator.domain.states import SETTLED_STATES
from mailmigrator.projections.follower import MigrationViews

HOP = "[old.example.com]:25"
POSTMAP = shutil.which("postmap")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[MigrationService]:
    app = MigrationService(env={"PERSISTENCE_MODULE": "eventsourcing.sqlite",
                                "SQLITE_DBNAME": str(tmp_path / "events.sqlite")})
    yield app
    app.close()


def old_server_run(app: MigrationService, login: str) -> list[Callable[[], object]]:
    """Every command of an account moved in old-server mode, in order: copy, catch up, switch, sweep."""
    return [
        lambda: app.record_login(login, "imap", "192.0.2.1", "192.0.2.9"),
        lambda: app.record_password_verified(login, "imap-login", "old-server"),
        lambda: app.record_account_created(login, login, [], "passwd-file"),
        lambda: app.record_migration_started(login, [], 0, 0, node="n1"),
        lambda: app.record_completed(login, 0, 0, 0, 0.1, False),
        lambda: app.record_switch_started(login, node="n1"),
        lambda: app.record_migration_started(login, [], 0, 0, node="n1"),
        lambda: app.record_completed(login, 0, 0, 0, 0.1, False),
        lambda: app.record_switched_over(login, 0.2, 1, 0),
        lambda: app.record_swept(login, {}, 0, 0),
    ]


def notice_run(app: MigrationService, login: str) -> list[Callable[[], object]]:
    """An account copied behind the notice, failing once on the way."""
    return [
        lambda: app.record_login(login, "pop3", "192.0.2.2", ""),
        lambda: app.record_password_verified(login, "pop3-login", "notice"),
        lambda: app.record_account_created(login, login, [], "passwd-file"),
        lambda: app.record_migration_started(login, [], 0, 0, node="n1"),
        lambda: app.record_failed(login, "connection refused", True),
        lambda: app.record_migration_started(login, [], 0, 0, node="n1"),
        lambda: app.record_completed(login, 0, 0, 0, 0.1, False),
    ]


def unswitched(app: MigrationService, logins: list[str]) -> list[str]:
    return sorted(login for login in logins if app.has_account(login) and app.account(login).state not in SETTLED_STATES)


def test_the_map_holds_exactly_the_unswitched_accounts_after_every_event_and_after_replay(
        service: MigrationService, tmp_path: Path) -> None:
    path = tmp_path / "transport"
    transport = TransportMap(path, HOP, POSTMAP)
    views = MigrationViews(service, transport_map=transport)
    logins = ["ann@example.com", "ben@example.com", "cat@example.org"]
    steps = old_server_run(service, logins[0])
    others = notice_run(service, logins[1])
    steps = [s for pair in zip(steps, others + [lambda: None] * (len(steps) - len(others))) for s in pair]
    steps.insert(0, lambda: service.record_login(logins[2], "imap", "192.0.2.3", ""))
    routed_before_completion = set()
    for step in steps:
        step()
        views.catch_up()
        expected = unswitched(service, logins)
        assert sorted(transport.routed()) == expected
        assert set(transport.routed().values()) <= {f"smtp:{HOP}"}
        routed_before_completion |= set(expected)
    assert routed_before_completion == set(logins)
    assert sorted(transport.routed()) == ["cat@example.org"]

    path.write_text("ann@example.com  smtp:[elsewhere]:25\n")
    views.replay()
    assert sorted(transport.routed()) == ["cat@example.org"]
    if POSTMAP:
        assert lookup(path, "cat@example.org") == f"smtp:{HOP}"
        assert lookup(path, "ann@example.com") is None


def lookup(path: Path, key: str) -> str | None:
    assert POSTMAP is not None
    done = subprocess.run([POSTMAP, "-q", key, str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode in (0, 1), done.stderr
    return done.stdout.strip() if done.returncode == 0 else None


def test_a_view_older_than_the_file_does_not_overwrite_it(tmp_path: Path) -> None:
    path = tmp_path / "transport"
    newer, older = TransportMap(path, HOP), TransportMap(path, HOP)
    assert newer.rewrite(["ann@example.com"], 12)
    assert not older.rewrite(["ann@example.com", "ben@example.com"], 11)
    assert list(newer.routed()) == ["ann@example.com"]
    assert older.rewrite(["ben@example.com"], 11, force=True)
    assert list(newer.routed()) == ["ben@example.com"]
