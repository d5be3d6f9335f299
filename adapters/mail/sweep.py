"""The finish sweep's copy: the copy engine (either) run again over a completed account, its checkpoints gathered.

The engine copies each folder from its last checkpoint, so only messages above
it (same UIDVALIDITY) are fetched, and when UIDVALIDITY changed the target
folder is fingerprinted so nothing is copied twice. `SweepRecorder` stands in
for the event store while the engine sweeps: the account is already completed,
so its checkpoints are gathered here and become one `FinishSwept`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Unpack

from mailmigrator.domain.application import MigrationService
from mailmigrator.domain.checkpoints import CheckpointFields, FolderCheckpoint, FolderCopiedFields, advance
from mailmigrator.domain.model import AccountMigration, PlannedFolderFields
from mailmigrator.domain.use_cases.ports import Copier


class SweepRecorder:
    """Stands in for `MigrationService` while the copier sweeps: checkpoints are gathered per account, not recorded."""

    def __init__(self, app: MigrationService) -> None:
        self.app = app
        self.checkpoints: dict[str, dict[str, FolderCheckpoint]] = {}
        self.failures: dict[str, str] = {}

    def account(self, login: str) -> AccountMigration:
        return self.app.account(login)

    def record_migration_started(self, login: str, folders: list[PlannedFolderFields], total_messages: int,
                                 total_bytes: int, *, node: str, now: datetime | None, lease_seconds: float,
                                 engine: str = "imap") -> int:
        self.checkpoints[login] = {}
        self.failures.pop(login, None)
        return 0

    def record_folder_copied(self, login: str, **copied: Unpack[FolderCopiedFields]) -> None:
        advance(self.checkpoints.setdefault(login, {}), copied["source_folder"], FolderCheckpoint.of_copied(copied))

    def record_completed(self, login: str, messages: int, bytes: int, folders: int, duration_seconds: float,
                         passwords_only: bool, *, node: str | None) -> None:
        """The account stays completed: its sweep is recorded as one `FinishSwept` by the finish sweep."""

    def record_failed(self, login: str, reason: str, retryable: bool, *, node: str | None) -> None:
        self.failures[login] = reason


@dataclass
class SweepResult:
    """One account's sweep: the late messages per folder and the folders' new checkpoints (`FinishSwept`'s)."""

    ok: bool
    error: str = ""
    per_folder: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    checkpoints: dict[str, CheckpointFields] = field(default_factory=dict)

    @property
    def messages(self) -> int:
        return sum(self.per_folder.values())


class AccountSweeper:
    """Sweeps one completed account at a time with its own engine (under the node's source limit).

    With the dsync engine a sweep is one `sync -1 -R` pass; its per-folder counts are what that pass added.
    """

    def __init__(self, copier: Copier, recorder: SweepRecorder) -> None:
        self.copier = copier
        self.recorder = recorder

    async def sweep(self, login: str, source_name: str, password: str | None, target_login: str) -> SweepResult:
        result = await self.copier.copy(login, source_name, password, target_login)
        failure = self.recorder.failures.pop(login, None)
        gathered = self.recorder.checkpoints.pop(login, {})
        if not result.ok or failure is not None:
            return SweepResult(False, failure or result.error or "sweep failed")
        return SweepResult(
            True,
            per_folder={name: cp.messages for name, cp in gathered.items()},
            bytes=sum(cp.bytes for cp in gathered.values()),
            checkpoints={name: replace(cp, done=True).to_dict() for name, cp in gathered.items()},
        )
