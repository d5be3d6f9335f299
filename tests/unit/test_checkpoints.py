"""The folder checkpoint: counts add up within one UIDVALIDITY, start over on another; old payloads still load."""

from __future__ import annotations

import pytest

from mailmigrator.domain.application import MigrationService
from mailmigrator.domain.checkpoints import CheckpointFields, FolderCheckpoint, FolderCopiedFields, advance

LOGIN = "checkpoints@example.com"


def checkpoint(uidvalidity: int, highest_uid: int, messages: int, skipped: int = 0, done: bool = False) -> FolderCheckpoint:
    return FolderCheckpoint(
        "INBOX", uidvalidity, highest_uid, messages=messages, bytes=100 * messages, skipped=skipped, done=done,
        target_uidvalidity=5, target_uidnext=highest_uid + 1, last_uidl=f"u{highest_uid}",
    )


@pytest.mark.parametrize(("earlier", "later", "expected"), [
    # Same UIDVALIDITY: the counts add up, the position is the later one's.
    (checkpoint(7, 10, 10), checkpoint(7, 15, 5, skipped=1, done=True), checkpoint(7, 15, 15, skipped=1, done=True)),
    (checkpoint(7, 10, 10, skipped=2), checkpoint(7, 10, 0), checkpoint(7, 10, 10, skipped=2)),
    # Another UIDVALIDITY: the folder was recreated; the later checkpoint starts over.
    (checkpoint(7, 10, 10, skipped=2, done=True), checkpoint(8, 3, 3), checkpoint(8, 3, 3)),
    (checkpoint(0, 0, 4), checkpoint(9, 2, 2), checkpoint(9, 2, 2)),
])
def test_then(earlier: FolderCheckpoint, later: FolderCheckpoint, expected: FolderCheckpoint) -> None:
    assert earlier.then(later) == expected


@pytest.mark.parametrize(("steps", "expected"), [
    ([], None),
    ([checkpoint(7, 3, 3)], checkpoint(7, 3, 3)),
    ([checkpoint(7, 3, 3), checkpoint(7, 6, 3), checkpoint(7, 9, 3, done=True)], checkpoint(7, 9, 9, done=True)),
    ([checkpoint(7, 3, 3), checkpoint(8, 1, 1), checkpoint(8, 4, 3)], checkpoint(8, 4, 4)),
])
def test_advance_keeps_one_checkpoint_per_folder(
    steps: list[FolderCheckpoint], expected: FolderCheckpoint | None
) -> None:
    folders: dict[str, FolderCheckpoint] = {}
    for step in steps:
        assert advance(folders, "INBOX", step) == folders["INBOX"]
    assert folders.get("INBOX") == expected


def test_of_copied_counts_the_skipped_messages() -> None:
    copied: FolderCopiedFields = {
        "source_folder": "INBOX", "target_folder": "Posteingang", "uidvalidity": 7, "highest_uid": 15,
        "messages": 5, "bytes": 500, "skipped": [{"uid": 12, "reason": "too large"}], "done": True,
    }
    assert FolderCheckpoint.of_copied(copied) == FolderCheckpoint(
        "Posteingang", 7, 15, messages=5, bytes=500, skipped=1, done=True)


def test_dict_round_trip_and_a_stored_dict_without_the_newer_keys() -> None:
    full = checkpoint(7, 15, 15, skipped=1, done=True)
    assert FolderCheckpoint.from_dict(full.to_dict()) == full
    stored: CheckpointFields = {"target": "INBOX", "uidvalidity": 7, "highest_uid": 15, "messages": 2, "bytes": 200}
    assert FolderCheckpoint.from_dict(stored) == FolderCheckpoint("INBOX", 7, 15, messages=2, bytes=200)


def test_a_sweep_adds_to_the_copy_and_keeps_its_skipped_count() -> None:
    app = MigrationService()
    app.record_password_verified(LOGIN, "imap-login")
    app.record_account_created(LOGIN, LOGIN, [], "passwd-file")
    app.record_migration_started(LOGIN, [{"source": "INBOX", "target": "INBOX", "messages": 3}], 3, 300)
    app.record_folder_copied(LOGIN, source_folder="INBOX", target_folder="INBOX", uidvalidity=7, highest_uid=3,
                             messages=3, bytes=300, skipped=[{"uid": 2, "reason": "too large"}], done=True,
                             target_uidvalidity=5, target_uidnext=4)
    app.record_completed(LOGIN, 3, 300, 1, 1.0, False)
    # The payload a finish sweep wrote before checkpoints knew of skipped messages.
    swept: CheckpointFields = {"target": "INBOX", "uidvalidity": 7, "highest_uid": 5, "messages": 2, "bytes": 200,
                               "done": True, "target_uidvalidity": 5, "target_uidnext": 6, "last_uidl": ""}
    app.record_swept(LOGIN, {"INBOX": 2}, 2, 200, {"INBOX": swept})
    assert app.account(LOGIN).folders["INBOX"] == FolderCheckpoint(
        "INBOX", 7, 5, messages=5, bytes=500, skipped=1, done=True, target_uidvalidity=5, target_uidnext=6)
