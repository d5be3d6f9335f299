"""The identity-keeping copy engine: Dovecot's dsync on the new server pulls the account over IMAP (imapc).

dsync writes through the new Dovecot's storage with the old server's UIDs and
UIDVALIDITY, gaps included, so IMAP client caches and POP3 UIDLs (both sides on
the default ``pop3_uidl_format``) stay valid. Every pass, the first included,
is ``sync -1 -R``, which keeps mail that only the new side has (delivered there
after the MX switch; see `dsync_command` for why never ``backup``). After each
pass the flags are compared per message and corrected on the new side (see
`folders`).

The history is the IMAP engine's: the start claims the lease with the plan from
the old server's LIST and STATUS, each folder is recorded as a done
`FolderCopied` with both sides' UIDVALIDITY/UIDNEXT and the messages this pass
added, then the completion. One dsync run holds one slot of the node's limit on
the old server.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import structlog
import trio
from imapclient import IMAPClient

from mailmigrator.adapters.dovecot.doveadm import (
    EXIT_RUN_AGAIN,
    RETRYABLE_EXITS,
    ImapcLogin,
    dsync_command,
    failure_line,
    private_config,
    run_doveadm,
)
from mailmigrator.adapters.dovecot.folders import FolderStatus, copy_flags, folder_status, folder_uids, sizes_of
from mailmigrator.adapters.imap.source import ImapSource
from mailmigrator.adapters.mail.adaptive_limit import AdaptiveLimit
from mailmigrator.adapters.mail.connection import LoginPlan, describe_error, is_transient
from mailmigrator.adapters.mail.copier import (
    AccountCopyFailed,
    AccountResult,
    CopyProgress,
    CopyRecorder,
    folder_totals,
)
from mailmigrator.adapters.mail.servers import MailServers
from mailmigrator.domain.checkpoints import FolderCheckpoint, FolderCopiedFields
from mailmigrator.domain.errors import AccountBusy, LeaseLost
from mailmigrator.domain.folders import FolderPlan, PlannedFolder, plan_folders, split_name
from mailmigrator.domain.model import PlannedFolderFields
from mailmigrator.domain.use_cases.ports import Progress

log = structlog.get_logger("mailmigrator.dsync")

T = TypeVar("T")

ENGINE = "dovecot"


@dataclass(frozen=True)
class DsyncSettings:
    """How doveadm is run: its path, the new Dovecot's config (None: doveadm's default), limits."""

    doveadm: str
    doveadm_config: Path | None
    exclude_folders: tuple[str, ...]
    node: str
    lease_seconds: float
    timeout: float = 4 * 3600.0
    # dsync's exit 2 ("changed meanwhile, run again") is answered by this many runs in all.
    runs: int = 3


@dataclass
class _Survey:
    """The account before a pass: the plan, how imapc logs in, and what each side holds."""

    plan: FolderPlan
    imapc: ImapcLogin
    counts: dict[str, tuple[int, int]]
    target_before: dict[str, set[int]]
    excluded_targets: list[str]

    @property
    def selectable(self) -> list[PlannedFolder]:
        return [f for f in self.plan.folders if f.selectable]


@dataclass(frozen=True)
class _FolderOutcome:
    folder: PlannedFolder
    source: FolderStatus
    target: FolderStatus
    messages: int
    bytes: int
    flags_changed: int
    # The old folder's HIGHESTMODSEQ read before its flags (0 without CONDSTORE).
    highest_modseq: int

    def changes(self, checkpoint: FolderCheckpoint | None) -> bool:
        """Whether this pass moved the folder past its recorded checkpoint (a new one is recorded only then)."""
        return (checkpoint is None or not checkpoint.done or self.messages > 0
                or (checkpoint.uidvalidity, checkpoint.highest_uid, checkpoint.highest_modseq)
                != (self.source.uidvalidity, self.source.uidnext - 1, self.highest_modseq)
                or (checkpoint.target_uidvalidity, checkpoint.target_uidnext)
                != (self.target.uidvalidity, self.target.uidnext))


@dataclass
class DsyncCopier:
    """The `Copier` port over doveadm dsync, recording through a `CopyRecorder` as the IMAP engine does."""

    recorder: CopyRecorder
    servers: MailServers
    source_limit: AdaptiveLimit
    settings: DsyncSettings
    progress: CopyProgress = field(default_factory=CopyProgress)
    store_limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(1))

    async def _store(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self.store_limiter)

    def _progress(self, progress: Progress | None) -> CopyProgress:
        if isinstance(progress, CopyProgress) and progress is not self.progress:
            if progress.parent is None:
                progress.parent = self.progress
            return progress
        return self.progress

    async def copy(self, login: str, source_name: str, password: str | None, target_login: str,
                   progress: Progress | None = None) -> AccountResult:
        """One pass over the account: plan, claim, dsync, flags, record each folder and the completion."""
        counters = self._progress(progress)
        source_plan = self.servers.copy_plan(source_name, login, password)
        target_plan = self.servers.target_plan(target_login)
        started = time.monotonic()
        try:
            async with self.source_limit.limiter:
                outcomes, checkpoints = await self._pass(login, target_login, source_plan, target_plan, counters)
            for outcome in outcomes:
                if outcome.changes(checkpoints.get(outcome.folder.source)):
                    await self._record_folder(login, outcome)
                counters.count(messages=outcome.messages, bytes=outcome.bytes)
            return await self._complete(login, len(outcomes), time.monotonic() - started, counters)
        except (AccountBusy, LeaseLost) as e:
            log.info("account held by another node", login=login, detail=str(e))
            return AccountResult(login, ok=False, error=str(e), busy=True)
        except AccountCopyFailed as e:
            reason, retryable = str(e), e.retryable
            await self._store(lambda: self.recorder.record_failed(login, reason, retryable, node=self.settings.node))
            counters.count(accounts_failed=1)
            log.warning("account copy failed", login=login, reason=reason, retryable=retryable, engine=ENGINE)
            return AccountResult(login, ok=False, error=reason)

    async def _pass(self, login: str, target_login: str, source_plan: LoginPlan, target_plan: LoginPlan,
                    counters: CopyProgress) -> tuple[list[_FolderOutcome], dict[str, FolderCheckpoint]]:
        account = await self._store(lambda: self.recorder.account(login))
        survey = await self._blocking("planning", lambda: self._survey(source_plan, target_plan))
        await self._record_start(login, survey, counters)
        checkpoints = dict(account.folders)
        lease = _LeaseKeeper(self, login, survey, checkpoints)
        failure: AccountCopyFailed | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lease.renew_while_running, nursery.cancel_scope)
            try:
                await self._dsync(login, target_login, survey, source_plan.credentials.password)
            except AccountCopyFailed as e:
                failure = e  # raised below: out of the nursery it would come wrapped in an exception group
            finally:
                nursery.cancel_scope.cancel()
        if lease.lost is not None:
            raise lease.lost
        if failure is not None:
            raise failure
        outcomes = await self._blocking("comparing flags",
                                        lambda: self._settle(source_plan, target_plan, survey, checkpoints))
        # A folder whose lease renewal was the last record says "not done": it is recorded again.
        return outcomes, {name: cp for name, cp in checkpoints.items() if name not in lease.renewed}

    async def _blocking(self, what: str, step: Callable[[], T]) -> T:
        """A step on both servers in a worker thread; a failure becomes `AccountCopyFailed` naming `what`."""
        try:
            result = await trio.to_thread.run_sync(step)
        except Exception as e:  # noqa: BLE001 - every failure of a step is one reason
            self.source_limit.failed(e)
            raise AccountCopyFailed(f"{what}: {describe_error(e)}", retryable=is_transient(e)) from None
        self.source_limit.succeeded()
        return result

    def _survey(self, source_plan: LoginPlan, target_plan: LoginPlan) -> _Survey:
        source = ImapSource(self.servers.source.address, source_plan)
        target = self.servers.open_target(target_plan)
        try:
            source_ns, target_ns = source.namespace(), target.namespace()
            plan = plan_folders(source.list_folders(), source_ns, target_ns, {}, self.settings.exclude_folders)
            counts = {f.source: folder_totals(source, f.source) for f in plan.folders if f.selectable}
            before = {f.target: folder_uids(target.client, f.target) for f in plan.folders if f.selectable}
            excluded = [target_ns.prefix + (target_ns.separator or "/").join(split_name(e.source, source_ns))
                        for e in plan.excluded]
            address = self.servers.source.address
            if address.tls == "detect" and not _uses_tls(source.client):
                address = replace(address, tls="disable")
            prefix = source_ns.prefix.rstrip(source_ns.separator) if source_ns.separator else source_ns.prefix
            return _Survey(plan, ImapcLogin(address, source_plan, prefix), counts, before, excluded)
        finally:
            source.close()
            target.close()

    async def _record_start(self, login: str, survey: _Survey, counters: CopyProgress) -> None:
        planned: list[PlannedFolderFields] = [
            {"source": f.source, "target": f.target, "messages": survey.counts.get(f.source, (0, 0))[0],
             "bytes": survey.counts.get(f.source, (0, 0))[1]}
            for f in survey.plan.folders
        ]
        total_messages = sum(n for n, _ in survey.counts.values())
        total_bytes = sum(b for _, b in survey.counts.values())
        await self._store(lambda: self.recorder.record_migration_started(
            login, planned, total_messages, total_bytes, node=self.settings.node, now=datetime.now(timezone.utc),
            lease_seconds=self.settings.lease_seconds, engine=ENGINE))
        counters.count(total_messages=total_messages, total_bytes=total_bytes)

    async def _dsync(self, login: str, target_login: str, survey: _Survey, secret: str) -> None:
        """Run dsync until it reports no change left (bounded); `AccountCopyFailed` with doveadm's reason."""
        s = self.settings
        with private_config(s.doveadm_config, survey.imapc) as config:
            for run in range(1, s.runs + 1):
                command = dsync_command(s.doveadm, config, target_login, survey.excluded_targets)
                began = time.monotonic()
                status, stderr = await run_doveadm(command, s.timeout)
                log.info("dsync ran", login=login, run=run, exit_status=status,
                         seconds=round(time.monotonic() - began, 3))
                if status == 0:
                    return
                if status != EXIT_RUN_AGAIN:
                    retryable = status in RETRYABLE_EXITS or status < 0
                    raise AccountCopyFailed(f"doveadm sync (exit {status}): {failure_line(stderr, secret)}",
                                            retryable=retryable)
        raise AccountCopyFailed(f"doveadm sync: still changing after {s.runs} runs", retryable=True)

    def _settle(self, source_plan: LoginPlan, target_plan: LoginPlan, survey: _Survey,
                checkpoints: dict[str, FolderCheckpoint]) -> list[_FolderOutcome]:
        """Correct the flags, then read each folder's STATUS on both sides and what this pass added.

        The flags of a folder whose checkpoint holds a HIGHESTMODSEQ of the same folders on both sides are read
        only for messages changed on the old side since; a flag changed on the new side alone stays so.
        """
        source = ImapSource(self.servers.source.address, source_plan)
        target = self.servers.open_target(target_plan)
        try:
            outcomes = []
            for folder in survey.selectable:
                held = checkpoints.get(folder.source)
                old_now = folder_status(source.client, folder.source)
                new_now = folder_status(target.client, folder.target)
                same = held is not None and (held.uidvalidity, held.target_uidvalidity) == (old_now.uidvalidity,
                                                                                           new_now.uidvalidity)
                since = held.highest_modseq if held is not None and same else 0
                changed, modseq = copy_flags(source.client, target.client, folder.source, folder.target, since)
                late = late_uids(survey.target_before.get(folder.target, set()),
                                 folder_uids(target.client, folder.target), folder_uids(source.client, folder.source))
                outcomes.append(_FolderOutcome(
                    folder, folder_status(source.client, folder.source), folder_status(target.client, folder.target),
                    len(late), sizes_of(target.client, folder.target, late), changed, modseq))
            return outcomes
        finally:
            source.close()
            target.close()

    async def _record_folder(self, login: str, outcome: _FolderOutcome) -> None:
        copied: FolderCopiedFields = {
            "source_folder": outcome.folder.source, "target_folder": outcome.folder.target,
            "uidvalidity": outcome.source.uidvalidity, "highest_uid": max(outcome.source.uidnext - 1, 0),
            "messages": outcome.messages, "bytes": outcome.bytes, "skipped": [], "done": True,
            "target_uidvalidity": outcome.target.uidvalidity, "target_uidnext": outcome.target.uidnext,
            "last_uidl": "", "node": self.settings.node, "highest_modseq": outcome.highest_modseq,
        }
        if outcome.flags_changed:
            log.info("flags corrected", login=login, folder=outcome.folder.source, messages=outcome.flags_changed)
        await self._store(lambda: self.recorder.record_folder_copied(login, **copied))

    async def _complete(self, login: str, folders: int, duration: float, counters: CopyProgress) -> AccountResult:
        account = await self._store(lambda: self.recorder.account(login))
        messages = sum(f.messages for f in account.folders.values())
        size = sum(f.bytes for f in account.folders.values())
        try:
            await self._store(lambda: self.recorder.record_completed(
                login, messages, size, folders, duration, False, node=self.settings.node))
        except LeaseLost as e:
            return AccountResult(login, ok=False, error=str(e), busy=True)
        counters.count(accounts_done=1)
        return AccountResult(login, True, messages, size, 0, folders)


class _LeaseKeeper:
    """Renews the node's lease on the account while doveadm runs (the IMAP engine renews with each checkpoint).

    A renewal re-records the largest folder's checkpoint as not done, with nothing added; that folder is
    recorded again when the pass ends. `lost`: another node took the account over meanwhile.
    """

    def __init__(self, copier: DsyncCopier, login: str, survey: _Survey,
                 checkpoints: dict[str, FolderCheckpoint]) -> None:
        self.copier = copier
        self.login = login
        self.survey = survey
        self.checkpoints = checkpoints
        self.renewed: set[str] = set()
        self.lost: LeaseLost | None = None

    async def renew_while_running(self, run: trio.CancelScope) -> None:
        """Renew every third of the lease until cancelled; on `LeaseLost` stop the run (`run` cancelled)."""
        folders = sorted(self.survey.selectable, key=lambda f: -self.survey.counts.get(f.source, (0, 0))[1])
        if not folders:
            return
        folder = folders[0]
        held = self.checkpoints.get(folder.source)
        copied: FolderCopiedFields = {
            "source_folder": folder.source, "target_folder": folder.target,
            "uidvalidity": held.uidvalidity if held else 0, "highest_uid": held.highest_uid if held else 0,
            "messages": 0, "bytes": 0, "skipped": [], "done": False,
            "target_uidvalidity": held.target_uidvalidity if held else 0,
            "target_uidnext": held.target_uidnext if held else 0,
            "last_uidl": "", "node": self.copier.settings.node,
            "highest_modseq": held.highest_modseq if held else 0,
        }
        while True:
            await trio.sleep(self.copier.settings.lease_seconds / 3)
            try:
                await trio.to_thread.run_sync(lambda: self.copier.recorder.record_folder_copied(self.login, **copied),
                                              limiter=self.copier.store_limiter)
            except LeaseLost as e:
                self.lost = e
                run.cancel()
                return
            self.renewed.add(folder.source)


def late_uids(before: set[int], after: set[int], source: set[int]) -> list[int]:
    """The new side's UIDs of the messages this pass brought from the old side.

    dsync renumbers a message that only the new side has when the old side's next message claims its UID (both
    get new UIDs above): such a UID is gone from the new side but held on the old, and its new UID is not a late
    message. Of the added UIDs the highest are taken, so the byte count is close when that happened.
    """
    added = sorted(after - before)
    renumbered = len((before - after) & source)
    return added[renumbered:]


def _uses_tls(client: IMAPClient) -> bool:
    return isinstance(client.socket(), ssl.SSLSocket)
