"""A deterministic, realistic migration history, recorded through the service layer.

Used by replay tests and the replay benchmark, where many events are needed
without a mail server.
"""

from __future__ import annotations

from mailmigrator.domain.application import MigrationService
from mailmigrator.domain.model import PlannedFolderFields

FOLDERS = ("INBOX", "Sent", "Drafts", "Archive/2019", "Entwürfe")


def record_sample_accounts(app: MigrationService, first: int, count: int, checkpoints: int = 2) -> int:
    """Record the migrations of accounts user{first}..user{first+count-1}; returns events written.

    Every seventh account fails once and is retried; every fifth gets a wrong password first.
    """
    written = 0
    for n in range(first, first + count):
        login = f"user{n}@example.com"
        before = app.recorder.max_notification_id() or 0
        app.record_login(login, "imap", f"127.0.0.{n % 200 + 2}", "127.0.0.1")
        if n % 5 == 0:
            app.record_password_rejected(login, "authentication failed")
        app.record_password_verified(login, "imap-login")
        if n % 3 == 0:
            app.record_account_created(login, login, [f"alias{n}@example.com"], "passwd-file",
                                       [{"address": "ceo@example.com", "reason": "already mapped to chief@example.com"}])
        else:
            app.record_account_created(login, login, [], "passwd-file")
        plan: list[PlannedFolderFields] = [{"source": f, "target": f, "messages": 10 * checkpoints, "bytes": 20_000} for f in FOLDERS]
        app.record_migration_started(login, plan, len(plan) * 10 * checkpoints, len(plan) * 20_000)
        if n % 7 == 0:
            app.record_failed(login, "connection reset by old server", True)
            app.record_migration_started(login, plan, len(plan) * 10 * checkpoints, len(plan) * 20_000)
        for folder in FOLDERS:
            for step in range(checkpoints):
                app.record_folder_copied(
                    login,
                    source_folder=folder,
                    target_folder=folder,
                    uidvalidity=1000 + n,
                    highest_uid=10 * (step + 1),
                    messages=10,
                    bytes=10_000 // checkpoints,
                    skipped=[],
                    done=step == checkpoints - 1,
                )
        app.record_completed(login, len(FOLDERS) * 10 * checkpoints, len(FOLDERS) * 10_000, len(FOLDERS), 2.5, False)
        app.record_post_script(login, 0, 0.1, False)
        written += (app.recorder.max_notification_id() or 0) - before
    return written
