"""Leases: one node migrates an account at a time; another takes over only after expiry; fencing."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from eventsourcing.persistence import RecordConflictError, StoredEvent

from mailmigrator.domain.application import MigrationService
from mailmigrator.domain.errors import AccountBusy, LeaseLost
from mailmigrator.domain.model import AccountMigration
from mailmigrator.projections.accounts import apply_to_account, expired_leases, new_account_doc

LOGIN = "lease@example.com"
PLAN = [{"source": "INBOX", "target": "INBOX", "messages": 3}]
LEASE = 120.0


def checkpoint(node: str, highest_uid: int = 3) -> dict[str, object]:
    return {"source_folder": "INBOX", "target_folder": "INBOX", "uidvalidity": 7, "highest_uid": highest_uid,
            "messages": 1, "bytes": 100, "skipped": [], "done": False, "node": node}


@pytest.fixture
def app() -> MigrationService:
    service = MigrationService()
    service.record_password_verified(LOGIN, "imap-login")
    service.record_account_created(LOGIN, LOGIN, [], "passwd-file")
    return service


def claim(app: MigrationService, node: str, seconds_after_renewal: float) -> int:
    renewed = app.account(LOGIN).lease_renewed_at
    assert renewed is not None
    return app.record_migration_started(
        LOGIN, PLAN, 3, 300, node=node, now=renewed + timedelta(seconds=seconds_after_renewal), lease_seconds=LEASE
    )


def test_another_node_takes_over_only_after_the_lease_expires(app: MigrationService) -> None:
    app.record_migration_started(LOGIN, PLAN, 3, 300, node="node-a", now=None, lease_seconds=LEASE)
    app.record_folder_copied(LOGIN, **checkpoint("node-a"))
    with pytest.raises(AccountBusy) as busy:
        claim(app, "node-b", LEASE - 1)
    assert busy.value.node == "node-a" and "node-a" in str(busy.value)
    assert app.account(LOGIN).node == "node-a"
    assert claim(app, "node-b", LEASE) == 2
    account = app.account(LOGIN)
    assert (account.node, account.state, account.folders["INBOX"].highest_uid) == ("node-b", "copying", 3)


def test_the_owner_resumes_its_own_account_while_the_lease_is_live(app: MigrationService) -> None:
    app.record_migration_started(LOGIN, PLAN, 3, 300, node="node-a", now=None)
    assert claim(app, "node-a", 1) == 2


def test_without_a_clock_a_foreign_lease_counts_as_live(app: MigrationService) -> None:
    app.record_migration_started(LOGIN, PLAN, 3, 300, node="node-a")
    with pytest.raises(AccountBusy):
        app.record_migration_started(LOGIN, PLAN, 3, 300, node="node-b", now=None)


def test_a_failed_account_stays_with_its_node_until_the_lease_expires(app: MigrationService) -> None:
    app.record_migration_started(LOGIN, PLAN, 3, 300, node="node-a")
    app.record_failed(LOGIN, "connection reset", True, node="node-a")
    with pytest.raises(AccountBusy):
        claim(app, "node-b", 5)
    assert claim(app, "node-b", LEASE + 1) == 2


def test_a_node_that_lost_its_lease_cannot_write(app: MigrationService) -> None:
    app.record_migration_started(LOGIN, PLAN, 3, 300, node="node-a")
    claim(app, "node-b", LEASE + 1)
    version = app.account(LOGIN).version
    with pytest.raises(LeaseLost):
        app.record_folder_copied(LOGIN, **checkpoint("node-a", highest_uid=9))
    with pytest.raises(LeaseLost):
        app.record_completed(LOGIN, 3, 300, 1, 1.0, False, node="node-a")
    with pytest.raises(LeaseLost):
        app.record_failed(LOGIN, "late failure of the old owner", True, node="node-a")
    assert app.account(LOGIN).version == version, "nothing of the old owner was recorded"
    app.record_folder_copied(LOGIN, **checkpoint("node-b", highest_uid=9))
    app.record_completed(LOGIN, 3, 300, 1, 1.0, False, node="node-b")
    assert app.account(LOGIN).state == "completed"


def test_of_two_simultaneous_claims_the_store_lets_exactly_one_win(app: MigrationService) -> None:
    stale = app.account(LOGIN)
    app.record_migration_started(LOGIN, PLAN, 3, 300, node="node-a")
    stale.claim_migration(PLAN, 3, 300, 1, "node-b", None)
    with pytest.raises(RecordConflictError):
        app.save(stale)
    # The service reloads on that conflict, and then sees node-a's live lease.
    with pytest.raises(AccountBusy):
        app.record_migration_started(LOGIN, PLAN, 3, 300, node="node-b", now=None)
    assert app.account(LOGIN).node == "node-a"


def test_version_1_events_without_node_still_load(app: MigrationService) -> None:
    first = app.history(LOGIN)[0]
    topic = f"{AccountMigration.__module__}:AccountMigration"
    stamp = {"_type_": "datetime_iso", "_data_": "2026-01-02T03:04:05+00:00"}
    started = {"timestamp": stamp, "folders": PLAN, "total_messages": 3, "total_bytes": 300, "attempt": 1}
    copied = {"timestamp": stamp, "source_folder": "INBOX", "target_folder": "INBOX", "uidvalidity": 7,
              "highest_uid": 3, "messages": 3, "bytes": 300, "skipped": [], "done": True,
              "target_uidvalidity": 0, "target_uidnext": 0, "last_uidl": ""}
    version = app.account(LOGIN).version
    app.recorder.insert_events([
        StoredEvent(first.originator_id, version + 1, f"{topic}.MigrationStarted", json.dumps(started).encode()),
        StoredEvent(first.originator_id, version + 2, f"{topic}.FolderCopied", json.dumps(copied).encode()),
    ])
    account = app.account(LOGIN)
    assert (account.state, account.node, account.folders["INBOX"].messages) == ("copying", "", 3)
    assert app.history(LOGIN)[-2].node == ""  # type: ignore[attr-defined]


def test_the_account_view_shows_the_node_and_finds_expired_leases(app: MigrationService) -> None:
    app.record_migration_started(LOGIN, PLAN, 3, 300, node="node-a")
    app.record_folder_copied(LOGIN, **checkpoint("node-a"))
    events = app.history(LOGIN)
    doc = new_account_doc(LOGIN, "2026-01-01T00:00:00+00:00")
    for e in events[1:]:
        apply_to_account(doc, e)
    assert doc["node"] == "node-a"
    renewed = events[-1].timestamp
    assert expired_leases([doc], "node-b", renewed + timedelta(seconds=LEASE - 1), LEASE) == []
    assert expired_leases([doc], "node-b", renewed + timedelta(seconds=LEASE), LEASE) == [LOGIN]
    assert expired_leases([doc], "node-a", renewed + timedelta(seconds=LEASE * 2), LEASE) == []
