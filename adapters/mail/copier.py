"""Copying mailboxes from the old server to the new one: planned, batched, parallel, resumable, exactly once.

Exactly once rests on three rules:

1. A checkpoint (`FolderCopied`: source UIDVALIDITY + highest UID done, and
   the target's UIDVALIDITY + UIDNEXT at that moment) is recorded only after
   the target accepted every message up to it.
2. A resume copies source messages above the checkpoint, but first reads the
   fingerprints (Message-ID + size + SHA-256) of target messages from the
   checkpoint's UIDNEXT on: those were appended after the last checkpoint
   (killed between APPEND and record) and are matched, not copied again.
3. When a checkpoint cannot be trusted (source or target UIDVALIDITY changed,
   or no checkpoint), the whole target folder is fingerprinted instead.

Matching is by multiset: two identical messages on the source need two on the target.

With several nodes, a checkpoint also renews the node's lease on the account.
Before appending, a node whose last renewal is older than half the lease
records a checkpoint first: that renews the lease, or is refused (`LeaseLost`)
when another node has taken the account over, before anything is written.

Deliberate choices: messages flagged ``\\Deleted`` but not
expunged are copied with the flag (the user has not removed them yet, and the
new server expunges them as the old one would have); ``\\Recent`` is never
copied (it belongs to a session). A ``\\Noselect`` parent is not created: the
target gets it implicitly when its child is created, as on the source.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timezone
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, Unpack

import structlog
import trio

from mailmigrator.adapters.mail.adaptive_limit import AdaptiveLimit
from mailmigrator.adapters.imap.target import AppendOutcome, ImapTarget
from mailmigrator.adapters.mail.connection import LoginPlan, describe_error, is_transient
from mailmigrator.adapters.mail.message_source import (
    FetchedMessage,
    FolderListing,
    FolderTotals,
    MessageSource,
    SourceMessage,
)
from mailmigrator.adapters.retries import retrying
from mailmigrator.domain.checkpoints import FolderCheckpoint, FolderCopiedFields, SkippedMessage, advance
from mailmigrator.domain.errors import AccountBusy, ExplainedError, LeaseLost
from mailmigrator.domain.fingerprint import Fingerprint, fingerprint
from mailmigrator.domain.folders import FolderPlan, PlannedFolder, plan_folders
from mailmigrator.domain.model import AccountMigration, PlannedFolderFields
from mailmigrator.domain.retries import CONNECTION_RETRIES, RetryPolicy

log = structlog.get_logger("mailmigrator.copier")

T = TypeVar("T")

SourceFactory = Callable[[LoginPlan], MessageSource]
TargetFactory = Callable[[LoginPlan], ImapTarget]
# Messages and bytes to copy, by source folder name.
FolderCounts = dict[str, tuple[int, int]]
# The last recorded checkpoint of each source folder, by name.
Checkpoints = dict[str, FolderCheckpoint]
# A message left out of the copy: its source UID, size and why.


@dataclass(frozen=True)
class CopySettings:
    """How hard to push: batch sizes bound memory, connections bound the load on the old server.

    The fields without a default come from the configuration, which holds their defaults;
    the connections to the old server are bounded by the `AdaptiveLimit` the copier is given.
    """

    exclude_folders: tuple[str, ...]
    max_message_size: int
    # Accounts copied at once, and folders of one account at once (each over its own connections).
    concurrency: int
    folder_connections: int
    # Several nodes on one store: who copies, and how long its claim on an account lasts unrenewed.
    node: str
    lease_seconds: float
    batch_bytes: int = 1024 * 1024
    # What is left to copy of an account, per folder connection beyond the first: below it, another login on
    # each server costs more than copying over one connection.
    bytes_per_folder_connection: int = 8 * 1024 * 1024
    batch_messages: int = 250
    checkpoint_interval: float = 1.0
    # How a step on the old server is tried again after a transient failure.
    retries: RetryPolicy = CONNECTION_RETRIES


@dataclass(frozen=True)
class AccountJob:
    """One account to copy: its normalised login and how to log in on each side."""

    login: str
    source: LoginPlan
    target: LoginPlan
    # Counters of the batch this job belongs to (a console job); the engine's own counters see it too.
    progress: CopyProgress | None = None


@dataclass
class AccountResult:
    login: str
    ok: bool
    messages: int = 0
    bytes: int = 0
    skipped: int = 0
    folders: int = 0
    error: str | None = None
    # Another node holds the account's lease: this copy stopped without recording anything.
    busy: bool = False


@dataclass
class CopyProgress:
    """Counters for a progress display; updated from the copying tasks."""

    total_messages: int = 0
    total_bytes: int = 0
    messages: int = 0
    bytes: int = 0
    skipped: int = 0
    accounts_done: int = 0
    accounts_failed: int = 0
    started: float = field(default_factory=time.monotonic)
    # Counters that include these (the engine's, for a batch's own): every count goes there too.
    parent: CopyProgress | None = field(default=None, repr=False, compare=False)

    def count(self, **deltas: int) -> None:
        """Add to the named counters, here and in every parent."""
        progress: CopyProgress | None = self
        while progress is not None:
            for name, delta in deltas.items():
                setattr(progress, name, getattr(progress, name) + delta)
            progress = progress.parent

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.messages / elapsed
        byte_rate = self.bytes / elapsed
        left = max(self.total_bytes - self.bytes, 0)
        eta = f"{int(left / byte_rate) // 60}:{int(left / byte_rate) % 60:02d}" if byte_rate > 0 else "?"
        return (
            f"{self.messages:,}/{self.total_messages:,} messages, "
            f"{self.bytes / 1e6:,.1f}/{self.total_bytes / 1e6:,.1f} MB, "
            f"{rate:,.0f} msg/s, {byte_rate / 1e6:,.1f} MB/s, ETA {eta}"
            + (f", {self.skipped} skipped" if self.skipped else "")
        )


class AccountCopyFailed(ExplainedError):
    """Copying one account gave up; the message is the reason recorded."""

    def __init__(self, reason: str, retryable: bool) -> None:
        super().__init__(reason)
        self.retryable = retryable


@dataclass
class _FolderState:
    """The running checkpoint of one folder; deltas are what is not yet recorded."""

    folder: PlannedFolder
    uidvalidity: int
    highest_uid: int
    last_uidl: str
    target_uidvalidity: int
    target_uidnext: int
    messages: int = 0
    bytes: int = 0
    skipped: list[SkippedMessage] = field(default_factory=list)
    recorded_at: float = field(default_factory=time.monotonic)
    dirty: bool = False

    def checkpoint(self, done: bool, node: str) -> FolderCopiedFields:
        return {
            "source_folder": self.folder.source,
            "target_folder": self.folder.target,
            "uidvalidity": self.uidvalidity,
            "highest_uid": self.highest_uid,
            "messages": self.messages,
            "bytes": self.bytes,
            "skipped": list(self.skipped),
            "done": done,
            "target_uidvalidity": self.target_uidvalidity,
            "target_uidnext": self.target_uidnext,
            "last_uidl": self.last_uidl,
            "node": node,
        }

    def advance(self, batch: _Batch, outcome: AppendOutcome) -> tuple[int, int, int]:
        """Move past `batch`, which the target took as `outcome`; the messages, bytes and skips it adds."""
        refused: list[SkippedMessage] = [{"uid": m.uid, "size": len(m.raw), "reason": reason}
                                         for m, reason in outcome.refused]
        copied = len(outcome.accepted) + batch.present_messages
        size = sum(len(m.raw) for m in outcome.accepted) + batch.present_bytes
        self.highest_uid = batch.last.uid
        self.last_uidl = batch.last.uidl
        self.messages += copied
        self.bytes += size
        self.skipped += batch.skipped + refused
        if outcome.uidnext:
            self.target_uidvalidity = outcome.uidvalidity or self.target_uidvalidity
            self.target_uidnext = outcome.uidnext
        self.dirty = True
        return copied, size, len(batch.skipped) + len(refused)


@dataclass
class _Batch:
    """A run of fetched messages: those to append, and how many were already on the target or left out."""

    last: SourceMessage
    append: list[FetchedMessage]
    present_messages: int
    present_bytes: int
    skipped: list[SkippedMessage]


def resume_point(
    listing: FolderListing, checkpoint: FolderCheckpoint | None, target_uidvalidity: int
) -> tuple[list[SourceMessage], int, bool]:
    """The source messages still to copy, the first target UID to fingerprint, and whether the checkpoint held."""
    if checkpoint is None or checkpoint.target_uidvalidity != target_uidvalidity:
        return list(listing.messages), 1, False
    if listing.by_uidl:
        positions = {m.uidl: i for i, m in enumerate(listing.messages)}
        if checkpoint.last_uidl not in positions:
            return list(listing.messages), 1, False
        return listing.messages[positions[checkpoint.last_uidl] + 1:], checkpoint.target_uidnext or 1, True
    if checkpoint.uidvalidity != listing.uidvalidity:
        return list(listing.messages), 1, False
    pending = [m for m in listing.messages if m.uid > checkpoint.highest_uid]
    return pending, checkpoint.target_uidnext or 1, True


def batches(messages: Iterable[SourceMessage], max_bytes: int, max_messages: int) -> Iterable[list[SourceMessage]]:
    """Consecutive runs of messages bounded by total size and count (one big message is a batch of one)."""
    batch: list[SourceMessage] = []
    held = 0
    for message in messages:
        if batch and (held + message.size > max_bytes or len(batch) >= max_messages):
            yield batch
            batch, held = [], 0
        batch.append(message)
        held += message.size
    if batch:
        yield batch


def pipelined_batches(
    messages: Sequence[SourceMessage], max_bytes: int, max_messages: int, ramp: int = 8
) -> list[list[SourceMessage]]:
    """Like `batches`, but the first and the last batch are at most 1/`ramp` of the limits.

    A folder's appending starts when its first batch is fetched and ends with its
    last append; small batches at both ends shorten the time either side waits.
    """
    small_bytes, small_messages = max(max_bytes // ramp, 1), max(max_messages // ramp, 1)
    first = next(iter(batches(messages, small_bytes, small_messages)), [])
    out = [first] if first else []
    body = list(batches(messages[len(first):], max_bytes, max_messages))
    if body:
        last = body.pop()
        held, start = 0, len(last)
        while start > 0 and len(last) - start < small_messages and held + last[start - 1].size <= small_bytes:
            start -= 1
            held += last[start].size
        out += body
        out += [last[:start], last[start:]] if 0 < start < len(last) else [last]
    return out


def _first_cause(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


# Errors that already say how an account's copy ends: passed up unchanged, never retried or reworded.
_SETTLED = (AccountCopyFailed, LeaseLost, AccountBusy)


class CopyRecorder(Protocol):
    """Where the engine records a copy: the event store (`MigrationService`), or the finish sweep's `SweepRecorder`."""

    def account(self, login: str) -> AccountMigration: ...

    def record_migration_started(self, login: str, folders: list[PlannedFolderFields], total_messages: int,
                                 total_bytes: int, *, node: str, now: datetime | None, lease_seconds: float,
                                 engine: str = "imap") -> int: ...

    def record_folder_copied(self, login: str, **copied: Unpack[FolderCopiedFields]) -> None: ...

    def record_completed(self, login: str, messages: int, bytes: int, folders: int, duration_seconds: float,
                         passwords_only: bool, *, node: str | None) -> None: ...

    def record_failed(self, login: str, reason: str, retryable: bool, *, node: str | None) -> None: ...


class MailboxCopier:
    """Copies accounts with bounded parallelism, recording progress through a `CopyRecorder`."""

    def __init__(
        self,
        service: CopyRecorder,
        open_source: SourceFactory,
        open_target: TargetFactory,
        source_limit: AdaptiveLimit,
        settings: CopySettings,
        progress: CopyProgress | None = None,
    ) -> None:
        self.service = service
        self.open_source = open_source
        self.open_target = open_target
        # Every open connection to the old server holds one of its tokens; one limit serves all copiers of a node.
        self.source_limit = source_limit
        self.settings = settings
        self.progress = progress or CopyProgress()
        # The event store is written from one thread at a time.
        self.store_limiter = trio.CapacityLimiter(1)
        # Per account being copied: this node's monotonic clock just before its last lease event was saved.
        self.lease_renewed: dict[str, float] = {}

    async def _store(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self.store_limiter)

    async def copy_accounts(self, jobs: Sequence[AccountJob]) -> list[AccountResult]:
        """Copy every job, at most `concurrency` accounts at a time; one failure does not stop the others."""
        results: list[AccountResult] = []
        slots = trio.Semaphore(self.settings.concurrency)

        async def one(job: AccountJob) -> None:
            async with slots:
                results.append(await self.copy_account(job))

        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(one, job)
        return results

    def progress_of(self, job: AccountJob) -> CopyProgress:
        """The counters `job` moves: its batch's (which count into the engine's), else the engine's."""
        if job.progress is None or job.progress is self.progress:
            return self.progress
        if job.progress.parent is None:
            job.progress.parent = self.progress
        return job.progress

    async def copy_account(self, job: AccountJob) -> AccountResult:
        """Plan, record the start, copy every folder, and record completion or failure."""
        try:
            return await self._copy_account(job)
        finally:
            self.lease_renewed.pop(job.login, None)

    async def _copy_account(self, job: AccountJob) -> AccountResult:
        started = time.monotonic()
        # The planning connections copy the first folders too: a small account costs one login on each side.
        # They hold one of the old server's tokens from the plan to the last folder.
        first = self._connections(job)
        try:
            async with self.source_limit.limiter:
                try:
                    checkpoints, plan, counts = await self._start(job, first)
                    await self._copy_folders(job, plan, checkpoints, counts, first)
                finally:
                    with trio.CancelScope(shield=True):
                        await first.close()
        except (AccountBusy, LeaseLost) as e:
            log.info("account held by another node", login=job.login, detail=str(e))
            return AccountResult(job.login, ok=False, error=str(e), busy=True)
        except AccountCopyFailed as e:
            return await self._record_failure(job, e)
        return await self._record_completion(job, len(plan.folders), time.monotonic() - started)

    def _connections(self, job: AccountJob) -> _FolderConnections:
        return _FolderConnections(lambda: self.open_source(job.source), lambda: self.open_target(job.target))

    async def _start(self, job: AccountJob, connections: _FolderConnections
                     ) -> tuple[Checkpoints, FolderPlan, FolderCounts]:
        """Plan the folders, record the start (claiming the lease), and count what earlier copies did."""
        account = await self._store(lambda: self.service.account(job.login))
        checkpoints = dict(account.folders)

        async def plan() -> tuple[FolderPlan, FolderCounts]:
            return await self._plan(job, connections)

        folder_plan, counts = await self._with_retries(job, "planning", plan, connections.close)
        await self._record_start(job, folder_plan, counts)
        for f in folder_plan.folders:
            cp = checkpoints.get(f.source)
            if cp is not None:
                self.progress_of(job).count(messages=cp.messages, bytes=cp.bytes)
        return checkpoints, folder_plan, counts

    async def _record_start(self, job: AccountJob, plan: FolderPlan, counts: FolderCounts) -> None:
        total_messages = sum(n for n, _ in counts.values())
        total_bytes = sum(b for _, b in counts.values())
        planned: list[PlannedFolderFields] = [
            {"source": f.source, "target": f.target, "messages": counts.get(f.source, (0, 0))[0],
             "bytes": counts.get(f.source, (0, 0))[1]}
            for f in plan.folders
        ]
        await self._renew_lease(job.login, lambda: self.service.record_migration_started(
            job.login, planned, total_messages, total_bytes,
            node=self.settings.node, now=datetime.now(timezone.utc), lease_seconds=self.settings.lease_seconds))
        self.progress_of(job).count(total_messages=total_messages, total_bytes=total_bytes)

    async def _record_failure(self, job: AccountJob, failure: AccountCopyFailed) -> AccountResult:
        reason, retryable = str(failure), failure.retryable
        await self._store(lambda: self.service.record_failed(job.login, reason, retryable, node=self.settings.node))
        self.progress_of(job).count(accounts_failed=1)
        log.warning("account copy failed", login=job.login, reason=reason, retryable=retryable)
        return AccountResult(job.login, ok=False, error=reason)

    async def _record_completion(self, job: AccountJob, folder_count: int, duration: float) -> AccountResult:
        account = await self._store(lambda: self.service.account(job.login))
        folders = account.folders
        messages = sum(f.messages for f in folders.values())
        size = sum(f.bytes for f in folders.values())
        skipped = sum(f.skipped for f in folders.values())
        try:
            await self._store(lambda: self.service.record_completed(
                job.login, messages, size, folder_count, duration, False, node=self.settings.node))
        except LeaseLost as e:
            return AccountResult(job.login, ok=False, error=str(e), busy=True)
        self.progress_of(job).count(accounts_done=1)
        return AccountResult(job.login, True, messages, size, skipped, folder_count)

    async def _with_retries(
        self,
        job: AccountJob,
        what: str,
        step: Callable[[], Awaitable[T]],
        after_failure: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        """Run `step` on the old server, again after a transient failure; `AccountCopyFailed` when it gives up.

        `what` names the step in the log and in the reason; `after_failure` runs after each failure.
        """
        tries = 0
        try:
            async for attempt in retrying(self.settings.retries, on=is_transient):
                with attempt:
                    tries = attempt.num
                    if tries > 1:
                        await self.source_limit.wait_backoff()
                    return await self._try_once(job, what, tries, step, after_failure)
        except _SETTLED:
            raise
        except Exception as e:  # noqa: BLE001 - every failure the retries gave up on is one reason
            raise AccountCopyFailed(
                f"{what}: {describe_error(e)}" + (f" (after {tries} tries)" if tries > 1 else ""),
                retryable=is_transient(e),
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _try_once(
        self,
        job: AccountJob,
        what: str,
        tries: int,
        step: Callable[[], Awaitable[T]],
        after_failure: Callable[[], Awaitable[None]] | None,
    ) -> T:
        """One attempt: the adaptive limit learns how it went; a failure is raised as its first cause."""
        try:
            result = await step()
        except Exception as e:  # noqa: BLE001 - classified by the retries
            cause = _first_cause(e)
            if isinstance(cause, _SETTLED):
                raise cause from None
            self.source_limit.failed(cause)
            if after_failure is not None:
                await after_failure()
            if is_transient(cause) and tries < self.settings.retries.attempts:
                log.warning("transient failure, retrying", login=job.login, step=what, attempt=tries,
                            error=describe_error(cause))
            raise cause from None
        self.source_limit.succeeded()
        return result

    async def _plan(self, job: AccountJob, connections: _FolderConnections) -> tuple[FolderPlan, FolderCounts]:
        """List both sides, map the folders, create them on the target and subscribe; count what is to copy."""
        source, target = await connections.open()

        def plan_and_create() -> tuple[FolderPlan, FolderCounts]:
            plan, counts = account_plan(source, target, self.settings.exclude_folders)
            _create_folders(target, plan)
            return plan, counts

        plan, counts = await trio.to_thread.run_sync(plan_and_create)
        for excluded in plan.excluded:
            log.info("folder excluded", login=job.login, folder=excluded.source, pattern=excluded.pattern)
        return plan, counts

    async def _copy_folders(
        self, job: AccountJob, plan: FolderPlan, checkpoints: Checkpoints, counts: FolderCounts,
        first: _FolderConnections,
    ) -> None:
        """Copy the selectable folders, largest first, over `first` and up to `folder_connections` - 1 more pairs."""
        todo = sorted((f for f in plan.folders if f.selectable), key=lambda f: -counts.get(f.source, (0, 0))[1])
        send, receive = trio.open_memory_channel[PlannedFolder](len(todo))
        for folder in todo:
            send.send_nowait(folder)
        send.close()
        left = sum(max(0, counts.get(f.source, (0, 0))[1] - _copied_bytes(checkpoints, f.source)) for f in todo)
        s = self.settings
        workers = folder_workers(left, len(todo), s.folder_connections, s.bytes_per_folder_connection)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._folder_worker, job, receive.clone(), checkpoints, first)
                for _ in range(workers - 1):
                    nursery.start_soon(self._extra_folder_worker, job, receive.clone(), checkpoints)
        except BaseExceptionGroup as group:
            cause = _first_cause(group)
            if isinstance(cause, _SETTLED):
                raise cause from None
            raise

    async def _folder_worker(
        self, job: AccountJob, folders: trio.MemoryReceiveChannel[PlannedFolder], checkpoints: Checkpoints,
        connections: _FolderConnections,
    ) -> None:
        """Copy folders from `folders` one after another, reusing one source and one target connection."""
        async with folders:
            async for folder in folders:
                await self._copy_folder_with_retries(job, folder, connections, checkpoints)

    async def _extra_folder_worker(
        self, job: AccountJob, folders: trio.MemoryReceiveChannel[PlannedFolder], checkpoints: Checkpoints
    ) -> None:
        """A folder worker on connections of its own, holding an old-server token of its own while it runs.

        It starts only when a token is free now: every account copy holds a token, so copies waiting for
        more would wait on each other; with none free, the first worker copies every folder itself."""
        limiter = self.source_limit.limiter
        try:
            limiter.acquire_nowait()
        except trio.WouldBlock:
            async with folders:
                return
        connections = self._connections(job)
        try:
            await self._folder_worker(job, folders, checkpoints, connections)
        finally:
            with trio.CancelScope(shield=True):
                await connections.close()
            limiter.release()

    async def _copy_folder_with_retries(
        self, job: AccountJob, folder: PlannedFolder, connections: _FolderConnections, checkpoints: Checkpoints
    ) -> None:
        """Copy one folder; after a failure, record what was copied and reconnect before the next try."""
        running: list[_FolderState] = []

        async def copy() -> None:
            running.clear()
            source, target = await connections.open()
            await self._copy_folder(job, folder, source, target, checkpoints, running)

        async def record_and_disconnect() -> None:
            if running and running[0].dirty:
                await self._record(job, running[0], done=False, checkpoints=checkpoints)
            await connections.close()

        await self._with_retries(job, f'folder "{folder.source}"', copy, record_and_disconnect)

    async def _renew_lease(self, login: str, save: Callable[[], object]) -> None:
        """Save a lease event of this node; its lease now runs from no later than just before the save."""
        before = time.monotonic()
        await self._store(save)
        self.lease_renewed[login] = max(before, self.lease_renewed.get(login, before))

    def _lease_half_gone(self, login: str) -> bool:
        renewed = self.lease_renewed.get(login)
        return renewed is None or time.monotonic() - renewed > self.settings.lease_seconds / 2

    async def _record(
        self, job: AccountJob, state: _FolderState, *, done: bool, checkpoints: Checkpoints
    ) -> None:
        copied = state.checkpoint(done, self.settings.node)
        await self._renew_lease(job.login, lambda: self.service.record_folder_copied(job.login, **copied))
        advance(checkpoints, state.folder.source, FolderCheckpoint.of_copied(copied))
        state.messages, state.bytes, state.skipped = 0, 0, []
        state.recorded_at = time.monotonic()
        state.dirty = False

    async def _copy_folder(
        self,
        job: AccountJob,
        folder: PlannedFolder,
        source: MessageSource,
        target: ImapTarget,
        checkpoints: Checkpoints,
        state_out: list[_FolderState],
    ) -> None:
        """Copy what the folder's checkpoint does not cover: fetching and appending overlap, one batch apart."""
        resumed = await self._resume_folder(job, folder, source, target, checkpoints)
        if resumed is None:
            return
        state, pending, present = resumed
        state_out.append(state)
        send, receive = trio.open_memory_channel[_Batch](0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._fetch_batches, source, pending, present, send)
            nursery.start_soon(self._append_batches, job, target, state, receive, checkpoints)
        await self._record(job, state, done=True, checkpoints=checkpoints)

    async def _resume_folder(
        self, job: AccountJob, folder: PlannedFolder, source: MessageSource, target: ImapTarget,
        checkpoints: Checkpoints,
    ) -> tuple[_FolderState, list[SourceMessage], Counter[Fingerprint]] | None:
        """Where the folder's copy starts: its running checkpoint, the messages still to copy, and the
        fingerprints of target messages appended after the last checkpoint; None when it is done."""
        listing = await trio.to_thread.run_sync(source.open_folder, folder.source)
        target_uidvalidity, target_uidnext = await trio.to_thread.run_sync(target.status, folder.target)
        checkpoint = checkpoints.get(folder.source)
        pending, from_uid, held = resume_point(listing, checkpoint, target_uidvalidity)
        if held and not pending and checkpoint and checkpoint.done:
            return None
        state = _FolderState(
            folder,
            uidvalidity=listing.uidvalidity,
            highest_uid=checkpoint.highest_uid if held and checkpoint else 0,
            last_uidl=checkpoint.last_uidl if held and checkpoint else "",
            target_uidvalidity=target_uidvalidity,
            target_uidnext=target_uidnext,
        )
        present: Counter[Fingerprint] = Counter()
        if pending and target_uidnext > from_uid:
            present = Counter(await trio.to_thread.run_sync(
                lambda: list(target.fingerprints(folder.target, from_uid, self.settings.batch_bytes))))
            if present:
                log.info("matching by fingerprint", login=job.login, folder=folder.source,
                         target_messages=sum(present.values()), checkpoint_held=held)
        return state, pending, present

    async def _fetch_batches(
        self,
        source: MessageSource,
        pending: Sequence[SourceMessage],
        present: Counter[Fingerprint],
        batches: trio.MemorySendChannel[_Batch],
    ) -> None:
        """Fetch `pending` batch by batch, leaving out messages too large and those `present` on the target."""
        s = self.settings
        async with batches:
            for group in pipelined_batches(pending, s.batch_bytes, s.batch_messages):
                wanted, skipped = _split_oversized(group, s.max_message_size)
                fetched = await trio.to_thread.run_sync(source.fetch, wanted)
                await batches.send(_missing_on_target(group[-1], fetched, present, skipped))

    async def _append_batches(
        self,
        job: AccountJob,
        target: ImapTarget,
        state: _FolderState,
        batches: trio.MemoryReceiveChannel[_Batch],
        checkpoints: Checkpoints,
    ) -> None:
        """Append each batch, move the folder's checkpoint past it, and record it every `checkpoint_interval`."""
        async with batches:
            async for batch in batches:
                outcome = AppendOutcome()
                if batch.append:
                    if self._lease_half_gone(job.login):
                        # A slow fetch or a retry's backoff outlasted half the lease: renew it
                        # (or learn it was taken over) before writing to the new server.
                        await self._record(job, state, done=False, checkpoints=checkpoints)
                    outcome = await trio.to_thread.run_sync(target.append, state.folder.target, batch.append)
                copied, size, skipped = state.advance(batch, outcome)
                self.progress_of(job).count(messages=copied, bytes=size, skipped=skipped)
                if time.monotonic() - state.recorded_at >= self.settings.checkpoint_interval:
                    await self._record(job, state, done=False, checkpoints=checkpoints)


class _FolderConnections:
    """The source and target connection a folder worker keeps from one folder to the next."""

    def __init__(self, open_source: Callable[[], MessageSource], open_target: Callable[[], ImapTarget]) -> None:
        self._open_source = open_source
        self._open_target = open_target
        self._source: MessageSource | None = None
        self._target: ImapTarget | None = None

    async def open(self) -> tuple[MessageSource, ImapTarget]:
        """Both connections, opening whichever is not open."""
        if self._source is None:
            self._source = await trio.to_thread.run_sync(self._open_source)
        if self._target is None:
            self._target = await trio.to_thread.run_sync(self._open_target)
        return self._source, self._target

    async def close(self) -> None:
        source, target = self._source, self._target
        self._source = self._target = None
        for connection in (source, target):
            if connection is not None:
                await trio.to_thread.run_sync(connection.close)


def folder_workers(bytes_left: int, folders: int, most: int, bytes_per_connection: int) -> int:
    """How many folder connections an account's copy opens: one, plus one per `bytes_per_connection`
    left to copy, at most `most` and at most one per folder."""
    return max(1, min(most, folders, 1 + bytes_left // max(1, bytes_per_connection)))


def _copied_bytes(checkpoints: Checkpoints, folder: str) -> int:
    checkpoint = checkpoints.get(folder)
    return checkpoint.bytes if checkpoint is not None else 0


def account_plan(source: MessageSource, target: ImapTarget,
                 exclude_folders: Sequence[str]) -> tuple[FolderPlan, FolderCounts]:
    """Where each old folder goes on the new server, and its messages and bytes: what a copy records as its plan."""
    plan = plan_folders(source.list_folders(), source.namespace(), target.namespace(), target.special_use(),
                        exclude_folders)
    return plan, {f.source: folder_totals(source, f.source) for f in plan.folders if f.selectable}


def folder_totals(source: MessageSource, folder: str) -> tuple[int, int]:
    """Messages and bytes in `folder`: one STATUS when the source offers it (the folder worker lists it anyway)."""
    totals = source.folder_totals(folder) if isinstance(source, FolderTotals) else None
    if totals is None:
        listing = source.open_folder(folder)
        totals = (len(listing.messages), sum(m.size for m in listing.messages))
    return totals


def _create_folders(target: ImapTarget, plan: FolderPlan) -> None:
    """Create the selectable folders on the target, parents first, and subscribe those subscribed on the source."""
    for folder in sorted(plan.folders, key=lambda f: len(f.path)):
        if folder.selectable:
            target.ensure_folder(folder.target)
    subscribed = {f.name for f in target.list_folders() if f.subscribed}
    for folder in plan.folders:
        if folder.subscribed and folder.target not in subscribed:
            target.subscribe(folder.target)


def _split_oversized(
    messages: Sequence[SourceMessage], max_size: int
) -> tuple[list[SourceMessage], list[SkippedMessage]]:
    """The messages to fetch, and a skip for each larger than `max_size` (0: no limit)."""
    wanted: list[SourceMessage] = []
    skipped: list[SkippedMessage] = []
    for message in messages:
        if max_size and message.size > max_size:
            skipped.append({"uid": message.uid, "size": message.size,
                            "reason": f"larger than max_message_size ({message.size:,} > {max_size:,} bytes)"})
        else:
            wanted.append(message)
    return wanted, skipped


def _missing_on_target(
    last: SourceMessage, fetched: Sequence[FetchedMessage], present: Counter[Fingerprint],
    skipped: list[SkippedMessage],
) -> _Batch:
    """The batch ending at `last`: the fetched messages to append, less one match each in `present` (consumed)."""
    append: list[FetchedMessage] = []
    present_messages = present_bytes = 0
    for fetched_message in fetched:
        if present:
            fp = fingerprint(fetched_message.raw)
            if present[fp] > 0:
                present[fp] -= 1
                present_messages += 1
                present_bytes += len(fetched_message.raw)
                continue
        append.append(fetched_message)
    return _Batch(last, append, present_messages, present_bytes, skipped)
