"""The copier under its retry policy: a transient failure is tried again, the last one is recorded with the count."""

from __future__ import annotations

from mailmigrator.adapters.imap.target import ImapTarget
from mailmigrator.adapters.mail.adaptive_limit import AdaptiveLimit
from mailmigrator.adapters.mail.connection import LoginPlan, MailConnectionError
from mailmigrator.adapters.mail.copier import AccountJob, CopySettings, MailboxCopier
from mailmigrator.domain.credentials import Credentials
from mailmigrator.adapters.mail.message_source import MessageSource
from mailmigrator.domain.application import MigrationService
from mailmigrator.domain.retries import RetryPolicy

LOGIN = "alice@example.com"
QUICK = RetryPolicy(attempts=3, first_wait=0.001, max_wait=0.002)


class UnreachableSource:
    """Opening a connection to the old server fails with `error`, every time; counts the attempts."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.opened = 0

    def __call__(self, plan: LoginPlan) -> MessageSource:
        self.opened += 1
        raise self.error


def never_opened(plan: LoginPlan) -> ImapTarget:
    raise AssertionError("the target is opened only after the source")


def copier_for(source: UnreachableSource) -> tuple[MigrationService, MailboxCopier, AdaptiveLimit]:
    app = MigrationService()
    app.record_password_verified(LOGIN, "test")
    app.record_account_created(LOGIN, LOGIN, [], "existing")
    limit = AdaptiveLimit("old.example", 4)
    settings = CopySettings(exclude_folders=(), max_message_size=0, concurrency=1, folder_connections=1,
                            node="", lease_seconds=120.0, retries=QUICK)
    return app, MailboxCopier(app, source, never_opened, limit, settings), limit


def job() -> AccountJob:
    plan = LoginPlan(LOGIN, Credentials(LOGIN, "secret"))
    return AccountJob(LOGIN, plan, plan)


async def test_a_transient_failure_is_tried_as_often_as_the_policy_says_then_recorded() -> None:
    source = UnreachableSource(ConnectionResetError(104, "Connection reset by peer"))
    app, copier, limit = copier_for(source)
    result = await copier.copy_account(job())
    assert source.opened == QUICK.attempts
    assert not result.ok and not result.busy
    assert result.error == "planning: connection failed: Connection reset by peer (after 3 tries)"
    account = app.account(LOGIN)
    assert account.last_error == result.error and account.failed_retryable
    assert limit.last_sign == "connection reset", "each failure is shown to the adaptive limit"


async def test_a_failure_no_retry_mends_is_recorded_at_once() -> None:
    source = UnreachableSource(MailConnectionError("old server: login refused"))
    app, copier, _ = copier_for(source)
    result = await copier.copy_account(job())
    assert source.opened == 1
    assert result.error == "planning: old server: login refused"
    assert not app.account(LOGIN).failed_retryable
